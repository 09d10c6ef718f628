// AES-256-XTS with VAES. Only the functions that use AVX-512 carry a target attribute. Building the whole
// file with -mavx512f could let an inline function emitted here (from a standard header, say) replace
// the baseline copy that other files use on CPUs without AVX-512.

#include "core/crypto/xts_vaes.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#if !defined(__clang__)
// GCC 12 warns inside its own AVX-512 headers, where the _mm512_undefined_* helpers read a variable
// on purpose. The pragma must come before the include, because GCC checks the warning state at
// the header line it reports.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <cpuid.h>
#include <immintrin.h>
#define VMCRYPT_XTS_VAES 1
#else
#define VMCRYPT_XTS_VAES 0
#endif

namespace vmcrypt::xts_vaes {

#if VMCRYPT_XTS_VAES

#define VMCRYPT_TARGET_AES __attribute__((target("aes,sse4.1")))
#define VMCRYPT_TARGET_VAES __attribute__((target("avx512f,avx512bw,vaes,aes")))

namespace {

constexpr std::size_t unit_size = 512;
constexpr int vectors_per_unit = 8;  // 8 x 64 bytes
constexpr int rounds = 14;

// One step of the AES-256 key schedule: `previous` is the round key two steps back and `assist` the
// AESKEYGENASSIST word broadcast to all lanes.
VMCRYPT_TARGET_AES __m128i next_round_key(__m128i previous, __m128i assist)
{
    previous = _mm_xor_si128(previous, _mm_slli_si128(previous, 4));
    previous = _mm_xor_si128(previous, _mm_slli_si128(previous, 4));
    previous = _mm_xor_si128(previous, _mm_slli_si128(previous, 4));
    return _mm_xor_si128(previous, assist);
}

// Round keys 2i and 2i+1 from keys 2i-2 and 2i-1; the round constant must be an immediate.
template <int RoundConstant>
VMCRYPT_TARGET_AES void expand_pair(__m128i* round_keys, int i, bool odd_key_too)
{
    const __m128i even_assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(round_keys[2 * i - 1], RoundConstant), 0xff);
    round_keys[2 * i] = next_round_key(round_keys[2 * i - 2], even_assist);
    if (odd_key_too) {
        const __m128i odd_assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(round_keys[2 * i], 0), 0xaa);
        round_keys[2 * i + 1] = next_round_key(round_keys[2 * i - 1], odd_assist);
    }
}

// Multiplies a 128-bit tweak by x in GF(2^128) (IEEE 1619 bit order), as in xts.cpp.
VMCRYPT_TARGET_AES __m128i multiply_by_x(__m128i tweak)
{
    const __m128i feedback = _mm_set_epi32(1, 1, 1, 0x87);
    __m128i carries = _mm_srai_epi32(tweak, 31);
    carries = _mm_shuffle_epi32(carries, _MM_SHUFFLE(2, 1, 0, 3));
    return _mm_xor_si128(_mm_add_epi32(tweak, tweak), _mm_and_si128(carries, feedback));
}

// Multiplies each of the four 128-bit tweaks in a vector by x^4: a 4-bit left shift of each 128-bit
// lane, where the 4 bits that leave the top, c, come back as c * (x^7 + x^2 + x + 1), carry-less, which
// is c ^ c<<1 ^ c<<2 ^ c<<7 and fits in the low 64 bits.
VMCRYPT_TARGET_VAES __m512i multiply_by_x4(__m512i tweaks)
{
    const __m512i top_bits = _mm512_srli_epi64(tweaks, 60);
    const __m512i shifted = _mm512_slli_epi64(tweaks, 4);
    const __m512i low_half_carry = _mm512_bslli_epi128(top_bits, 8);  // into the high 64 bits
    const __m512i overflow = _mm512_bsrli_epi128(top_bits, 8);        // the lane's top 4 bits, now low
    const __m512i reduced = _mm512_xor_si512(_mm512_xor_si512(overflow, _mm512_slli_epi64(overflow, 1)),
                                             _mm512_xor_si512(_mm512_slli_epi64(overflow, 2),
                                                              _mm512_slli_epi64(overflow, 7)));
    return _mm512_xor_si512(_mm512_xor_si512(shifted, low_half_carry), reduced);
}

// The first tweak vector of a unit: T, T*x, T*x^2, T*x^3.
VMCRYPT_TARGET_VAES __m512i first_tweak_vector(const std::uint8_t* initial_tweak)
{
    const __m128i t0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(initial_tweak));
    const __m128i t1 = multiply_by_x(t0);
    const __m128i t2 = multiply_by_x(t1);
    const __m128i t3 = multiply_by_x(t2);
    __m512i vector = _mm512_castsi128_si512(t0);
    vector = _mm512_inserti32x4(vector, t1, 1);
    vector = _mm512_inserti32x4(vector, t2, 2);
    return _mm512_inserti32x4(vector, t3, 3);
}

enum class Direction { encrypt, decrypt };

// `input` and `output` may be the same buffer. Each unit is read whole before its first byte is written.
template <Direction D>
VMCRYPT_TARGET_VAES void process_units(const std::uint8_t (*round_keys)[16], const std::uint8_t* input,
                                       std::uint8_t* output, std::size_t unit_count, const std::uint8_t* initial_tweaks)
{
    __m512i keys[rounds + 1];
    for (int r = 0; r <= rounds; ++r)
        keys[r] = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(round_keys[r])));

    for (std::size_t unit = 0; unit < unit_count; ++unit) {
        const std::uint8_t* const unit_input = input + unit * unit_size;
        std::uint8_t* const unit_output = output + unit * unit_size;
        __m512i tweaks[vectors_per_unit];
        tweaks[0] = first_tweak_vector(initial_tweaks + unit * 16);
        for (int k = 1; k < vectors_per_unit; ++k)
            tweaks[k] = multiply_by_x4(tweaks[k - 1]);

        __m512i blocks[vectors_per_unit];
        for (int k = 0; k < vectors_per_unit; ++k) {
            const __m512i plain = _mm512_loadu_si512(unit_input + 64 * k);
            blocks[k] = _mm512_xor_si512(plain, _mm512_xor_si512(tweaks[k], keys[0]));
        }
        for (int r = 1; r < rounds; ++r) {
            for (int k = 0; k < vectors_per_unit; ++k) {
                if constexpr (D == Direction::encrypt)
                    blocks[k] = _mm512_aesenc_epi128(blocks[k], keys[r]);
                else
                    blocks[k] = _mm512_aesdec_epi128(blocks[k], keys[r]);
            }
        }
        for (int k = 0; k < vectors_per_unit; ++k) {
            __m512i last_round;
            if constexpr (D == Direction::encrypt)
                last_round = _mm512_aesenclast_epi128(blocks[k], keys[rounds]);
            else
                last_round = _mm512_aesdeclast_epi128(blocks[k], keys[rounds]);
            _mm512_storeu_si512(unit_output + 64 * k, _mm512_xor_si512(last_round, tweaks[k]));
        }
    }
}

}  // namespace

bool vaes_available() noexcept
{
    // CPUID directly, because clang 14's __builtin_cpu_supports does not know "vaes".
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return false;
    const bool aes = ecx & (1u << 25);
    const bool osxsave = ecx & (1u << 27);
    if (!aes || !osxsave)
        return false;

    // The operating system must save the AVX-512 register state: XCR0 bits 1 and 2 (SSE and AVX) and
    // 5 to 7 (opmask and the upper ZMM registers).
    unsigned xcr0_low = 0, xcr0_high = 0;
    __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xe6) != 0xe6)
        return false;

    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return false;
    const bool avx512f = ebx & (1u << 16);
    const bool avx512bw = ebx & (1u << 30);
    const bool vaes = ecx & (1u << 9);
    return avx512f && avx512bw && vaes;
}

VMCRYPT_TARGET_AES void expand_key(const std::uint8_t* key, RoundKeys& keys) noexcept
{
    __m128i round_keys[rounds + 1];
    round_keys[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
    round_keys[1] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16));
    expand_pair<0x01>(round_keys, 1, true);
    expand_pair<0x02>(round_keys, 2, true);
    expand_pair<0x04>(round_keys, 3, true);
    expand_pair<0x08>(round_keys, 4, true);
    expand_pair<0x10>(round_keys, 5, true);
    expand_pair<0x20>(round_keys, 6, true);
    expand_pair<0x40>(round_keys, 7, false);

    // The equivalent inverse cipher runs the round keys backwards, with InvMixColumns applied to all but
    // the first and the last.
    for (int r = 0; r <= rounds; ++r) {
        _mm_store_si128(reinterpret_cast<__m128i*>(keys.encrypt[r]), round_keys[r]);
        const __m128i backwards = round_keys[rounds - r];
        _mm_store_si128(reinterpret_cast<__m128i*>(keys.decrypt[r]),
                        r == 0 || r == rounds ? backwards : _mm_aesimc_si128(backwards));
    }
    for (__m128i& round_key : round_keys)
        round_key = _mm_setzero_si128();
    __asm__ __volatile__("" : : "m"(round_keys) : "memory");  // keeps the scrub from being optimised away
}

void encrypt_units(const RoundKeys& keys, const std::uint8_t* input, std::uint8_t* output, std::size_t unit_count,
                   const std::uint8_t* initial_tweaks) noexcept
{
    process_units<Direction::encrypt>(keys.encrypt, input, output, unit_count, initial_tweaks);
}

void decrypt_units(const RoundKeys& keys, const std::uint8_t* input, std::uint8_t* output, std::size_t unit_count,
                   const std::uint8_t* initial_tweaks) noexcept
{
    process_units<Direction::decrypt>(keys.decrypt, input, output, unit_count, initial_tweaks);
}

#else

bool vaes_available() noexcept
{
    return false;
}

void expand_key(const std::uint8_t*, RoundKeys&) noexcept {}
void encrypt_units(const RoundKeys&, const std::uint8_t*, std::uint8_t*, std::size_t, const std::uint8_t*) noexcept {}
void decrypt_units(const RoundKeys&, const std::uint8_t*, std::uint8_t*, std::size_t, const std::uint8_t*) noexcept {}

#endif

}  // namespace vmcrypt::xts_vaes
