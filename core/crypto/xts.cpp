// AES-256-XTS (IEEE 1619) over data units, without Botan's XTS mode, which handles one message per call
// and is several times slower on 512-byte units. Here one multi-block AES call computes the initial
// tweaks of many units, and the XOR-encrypt-XOR passes run over 4 KiB chunks that stay in the L1 cache.

#include "core/crypto/xts.hpp"

#include "core/crypto/xts_vaes.hpp"
#include "core/error.hpp"

#include <botan/mem_ops.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

// The SSE2 path is used wherever the compiler targets SSE2, as every x86-64 build does. Defining
// VMCRYPT_XTS_PORTABLE selects the portable 64-bit path instead, to test that path on x86-64.
#if defined(__SSE2__) && !defined(VMCRYPT_XTS_PORTABLE)
#include <emmintrin.h>
#define VMCRYPT_XTS_SSE2 1
#else
#define VMCRYPT_XTS_SSE2 0
#endif

namespace vmcrypt {

namespace {

constexpr std::size_t block_size = 16;
constexpr std::size_t blocks_per_unit = xts_unit_size / block_size;

// The chunk size comes from a sweep of 4 to 64 units per chunk on an AMD EPYC (Zen 4) VM with Botan
// 2.19.3. Chunks of 8 units (4 KiB of data and 4 KiB of tweaks), with the next chunk prefetched, were as
// fast as larger chunks on cache-resident buffers and 25-40% faster on a 64 MiB buffer.
constexpr std::size_t units_per_chunk = 8;
constexpr std::size_t chunk_size = units_per_chunk * xts_unit_size;
constexpr std::size_t blocks_per_chunk = chunk_size / block_size;
// Units whose initial tweaks one tweak-key AES call computes.
constexpr std::size_t units_per_tweak_batch = 64;
static_assert(units_per_tweak_batch % units_per_chunk == 0);

// IEEE 1619-2018 limits a data unit to 2^20 blocks of 16 bytes.
constexpr std::size_t max_unit_blocks = std::size_t{1} << 20;

constexpr std::size_t cache_line_size = 64;

enum class Direction { encrypt, decrypt };

std::uint64_t load_le64(const std::uint8_t* bytes)
{
    std::uint64_t value;
    std::memcpy(&value, bytes, sizeof value);
    if constexpr (std::endian::native == std::endian::big)
        value = __builtin_bswap64(value);
    return value;
}

void store_le64(std::uint64_t value, std::uint8_t* bytes)
{
    if constexpr (std::endian::native == std::endian::big)
        value = __builtin_bswap64(value);
    std::memcpy(bytes, &value, sizeof value);
}

// A 128-bit tweak as two 64-bit halves. As in IEEE 1619, byte 0 of the tweak is the least significant
// byte of `low`.
struct Tweak {
    std::uint64_t low;
    std::uint64_t high;
};

Tweak load_tweak(const std::uint8_t* bytes)
{
    return Tweak{load_le64(bytes), load_le64(bytes + 8)};
}

void store_tweak(const Tweak& tweak, std::uint8_t* bytes)
{
    store_le64(tweak.low, bytes);
    store_le64(tweak.high, bytes + 8);
}

// Multiplies the tweak by x in GF(2^128) modulo x^128 + x^7 + x^2 + x + 1. That is a 128-bit left shift
// that XORs 0x87 into the low byte when a bit falls off the top, done without a branch so that the time
// does not depend on the tweak.
Tweak multiply_by_x(Tweak tweak)
{
    const std::uint64_t carry = tweak.high >> 63;
    tweak.high = (tweak.high << 1) | (tweak.low >> 63);
    tweak.low = (tweak.low << 1) ^ (0x87 & (0 - carry));
    return tweak;
}

void xor_block(std::uint8_t* block, const Tweak& tweak)
{
    store_le64(load_le64(block) ^ tweak.low, block);
    store_le64(load_le64(block + 8) ^ tweak.high, block + 8);
}

// Writes the tweaks of `block_count` consecutive blocks of one data unit, starting at `tweak`, into
// `tweaks` and XORs them into `data`. Returns the tweak of the block after the last one.
Tweak expand_and_xor_tweaks(std::uint8_t* data, std::uint8_t* tweaks, std::size_t block_count, Tweak tweak)
{
    for (std::size_t i = 0; i < block_count; ++i) {
        store_tweak(tweak, tweaks + i * block_size);
        xor_block(data + i * block_size, tweak);
        tweak = multiply_by_x(tweak);
    }
    return tweak;
}

// The unit tweak expansion below handles `Lanes` whole 512-byte units at once. The doublings of one
// unit form a dependency chain, so interleaving several units lets the CPU run the chains in parallel.
#if VMCRYPT_XTS_SSE2

// Multiplies by x as above with five SSE2 operations: shift each 32-bit lane left by one, then add
// each lane's lost top bit into bit 0 of the next lane, folding the tweak's top bit into lane 0 as 0x87.
__m128i multiply_by_x(__m128i tweak)
{
    const __m128i feedback = _mm_set_epi32(1, 1, 1, 0x87);
    __m128i carries = _mm_srai_epi32(tweak, 31);
    carries = _mm_shuffle_epi32(carries, _MM_SHUFFLE(2, 1, 0, 3));
    return _mm_xor_si128(_mm_add_epi32(tweak, tweak), _mm_and_si128(carries, feedback));
}

template <std::size_t Lanes>
void expand_and_xor_unit_tweaks(std::uint8_t* data, std::uint8_t* tweaks, const std::uint8_t* initial_tweaks)
{
    __m128i lane_tweaks[Lanes];
    for (std::size_t k = 0; k < Lanes; ++k)
        lane_tweaks[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(initial_tweaks + k * block_size));

    for (std::size_t i = 0; i < blocks_per_unit; ++i) {
        for (std::size_t k = 0; k < Lanes; ++k) {
            const std::size_t offset = k * xts_unit_size + i * block_size;
            auto* block = reinterpret_cast<__m128i*>(data + offset);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(tweaks + offset), lane_tweaks[k]);
            _mm_storeu_si128(block, _mm_xor_si128(_mm_loadu_si128(block), lane_tweaks[k]));
            lane_tweaks[k] = multiply_by_x(lane_tweaks[k]);
        }
    }
}

void xor_tweaks(std::uint8_t* data, const std::uint8_t* tweaks, std::size_t length)
{
    for (std::size_t i = 0; i < length; i += block_size) {
        auto* block = reinterpret_cast<__m128i*>(data + i);
        const __m128i tweak = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tweaks + i));
        _mm_storeu_si128(block, _mm_xor_si128(_mm_loadu_si128(block), tweak));
    }
}

#else

template <std::size_t Lanes>
void expand_and_xor_unit_tweaks(std::uint8_t* data, std::uint8_t* tweaks, const std::uint8_t* initial_tweaks)
{
    Tweak lane_tweaks[Lanes];
    for (std::size_t k = 0; k < Lanes; ++k)
        lane_tweaks[k] = load_tweak(initial_tweaks + k * block_size);

    for (std::size_t i = 0; i < blocks_per_unit; ++i) {
        for (std::size_t k = 0; k < Lanes; ++k) {
            const std::size_t offset = k * xts_unit_size + i * block_size;
            store_tweak(lane_tweaks[k], tweaks + offset);
            xor_block(data + offset, lane_tweaks[k]);
            lane_tweaks[k] = multiply_by_x(lane_tweaks[k]);
        }
    }
}

void xor_tweaks(std::uint8_t* data, const std::uint8_t* tweaks, std::size_t length)
{
    for (std::size_t i = 0; i < length; i += 8) {
        std::uint64_t word;
        std::uint64_t tweak_word;
        std::memcpy(&word, data + i, 8);
        std::memcpy(&tweak_word, tweaks + i, 8);
        word ^= tweak_word;
        std::memcpy(data + i, &word, 8);
    }
}

#endif

void run_block_cipher(const Botan::BlockCipher& cipher, Direction direction, std::uint8_t* data, std::size_t blocks)
{
    if (direction == Direction::encrypt)
        cipher.encrypt_n(data, data, blocks);
    else
        cipher.decrypt_n(data, data, blocks);
}

// Per-call scratch space on the stack, so that concurrent calls on one XtsCipher share nothing. The
// tweaks are derived from the tweak key, so the used part is scrubbed when the call ends, including
// when it ends by an exception.
struct Scratch {
    alignas(cache_line_size) std::array<std::uint8_t, chunk_size> tweaks;
    alignas(cache_line_size) std::array<std::uint8_t, units_per_tweak_batch * block_size> initial_tweaks;
    std::size_t tweaks_used = 0;
    std::size_t initial_tweaks_used = 0;

    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch()
    {
        Botan::secure_scrub_memory(tweaks.data(), tweaks_used);
        Botan::secure_scrub_memory(initial_tweaks.data(), initial_tweaks_used);
    }
};

// Processes one chunk of at most units_per_chunk units whose initial (encrypted) tweaks are given.
void process_chunk(const Botan::BlockCipher& data_cipher, Direction direction, std::uint8_t* chunk,
                   std::size_t unit_count, const std::uint8_t* initial_tweaks, Scratch& scratch)
{
    scratch.tweaks_used = std::max(scratch.tweaks_used, unit_count * xts_unit_size);
    std::uint8_t* tweaks = scratch.tweaks.data();

    if (unit_count == units_per_chunk) {
        expand_and_xor_unit_tweaks<units_per_chunk>(chunk, tweaks, initial_tweaks);
    } else {
        for (std::size_t u = 0; u < unit_count; ++u) {
            expand_and_xor_unit_tweaks<1>(chunk + u * xts_unit_size, tweaks + u * xts_unit_size,
                                          initial_tweaks + u * block_size);
        }
    }
    run_block_cipher(data_cipher, direction, chunk, unit_count * blocks_per_unit);
    xor_tweaks(chunk, tweaks, unit_count * xts_unit_size);
}

// Processes the units of `input` into `data`, which has the same size. `input` is either `data` itself
// (in place) or a buffer that does not overlap it. Unit i has the plain64 tweak first_sector + i.
void process_units(const Botan::BlockCipher& data_cipher, const Botan::BlockCipher& tweak_cipher,
                   const xts_vaes::RoundKeys* vaes_keys, Direction direction, const std::uint8_t* input,
                   std::span<std::uint8_t> data, std::uint64_t first_sector)
{
    if (data.size() % xts_unit_size != 0)
        throw std::invalid_argument("AES-XTS: data size " + std::to_string(data.size()) +
                                    " bytes is not a multiple of the " + std::to_string(xts_unit_size) +
                                    "-byte data unit");
    const std::size_t unit_count = data.size() / xts_unit_size;
    if (unit_count == 0)
        return;
    if (unit_count - 1 > std::numeric_limits<std::uint64_t>::max() - first_sector)
        throw std::invalid_argument("AES-XTS: " + std::to_string(unit_count) + " units starting at sector " +
                                    std::to_string(first_sector) + " run past the largest 64-bit sector number");

    Scratch scratch;
    std::uint8_t* const initial_tweaks = scratch.initial_tweaks.data();
    for (std::size_t batch_first = 0; batch_first < unit_count; batch_first += units_per_tweak_batch) {
        const std::size_t batch_units = std::min(units_per_tweak_batch, unit_count - batch_first);

        // plain64 is the sector number as a 64-bit little-endian integer, zero-padded to 16 bytes. One
        // multi-block call encrypts the whole batch under the tweak key.
        scratch.initial_tweaks_used = std::max(scratch.initial_tweaks_used, batch_units * block_size);
        for (std::size_t u = 0; u < batch_units; ++u) {
            store_le64(first_sector + batch_first + u, initial_tweaks + u * block_size);
            store_le64(0, initial_tweaks + u * block_size + 8);
        }
        tweak_cipher.encrypt_n(initial_tweaks, initial_tweaks, batch_units);

        std::uint8_t* const batch = data.data() + batch_first * xts_unit_size;
        const std::uint8_t* const batch_input = input + batch_first * xts_unit_size;
        if (vaes_keys) {
            if (direction == Direction::encrypt)
                xts_vaes::encrypt_units(*vaes_keys, batch_input, batch, batch_units, initial_tweaks);
            else
                xts_vaes::decrypt_units(*vaes_keys, batch_input, batch, batch_units, initial_tweaks);
            continue;
        }

        // Botan's AES works in place, so the batch is copied first. Only CPUs without VAES pay for it.
        if (batch_input != batch)
            std::memcpy(batch, batch_input, batch_units * xts_unit_size);

        for (std::size_t chunk_first = 0; chunk_first < batch_units; chunk_first += units_per_chunk) {
            const std::size_t first_unit = batch_first + chunk_first;
            const std::size_t chunk_units = std::min(units_per_chunk, unit_count - first_unit);
            std::uint8_t* chunk = data.data() + first_unit * xts_unit_size;

            // The passes over a chunk do little work per byte, so without a software prefetch of the
            // next chunk they wait on memory when the data is not in cache.
            const std::size_t next_units = std::min(units_per_chunk, unit_count - first_unit - chunk_units);
            for (std::size_t offset = 0; offset < next_units * xts_unit_size; offset += cache_line_size)
                __builtin_prefetch(chunk + chunk_size + offset, 1, 1);

            process_chunk(data_cipher, direction, chunk, chunk_units, initial_tweaks + chunk_first * block_size,
                          scratch);
        }
    }
}

// Processes one data unit of any whole number of blocks, with an explicit 16-byte tweak value.
void process_unit(const Botan::BlockCipher& data_cipher, const Botan::BlockCipher& tweak_cipher,
                  Direction direction, std::span<std::uint8_t> data, std::span<const std::uint8_t, 16> tweak_value)
{
    if (data.empty() || data.size() % block_size != 0 || data.size() / block_size > max_unit_blocks)
        throw std::invalid_argument("AES-XTS: data unit of " + std::to_string(data.size()) +
                                    " bytes is invalid, expected 1 to 2^20 whole 16-byte blocks "
                                    "(ciphertext stealing is not implemented)");

    Scratch scratch;
    scratch.initial_tweaks_used = block_size;
    std::memcpy(scratch.initial_tweaks.data(), tweak_value.data(), block_size);
    tweak_cipher.encrypt_n(scratch.initial_tweaks.data(), scratch.initial_tweaks.data(), 1);
    Tweak tweak = load_tweak(scratch.initial_tweaks.data());

    const std::size_t total_blocks = data.size() / block_size;
    for (std::size_t first_block = 0; first_block < total_blocks; first_block += blocks_per_chunk) {
        const std::size_t chunk_blocks = std::min(blocks_per_chunk, total_blocks - first_block);
        std::uint8_t* chunk = data.data() + first_block * block_size;

        scratch.tweaks_used = std::max(scratch.tweaks_used, chunk_blocks * block_size);
        tweak = expand_and_xor_tweaks(chunk, scratch.tweaks.data(), chunk_blocks, tweak);
        run_block_cipher(data_cipher, direction, chunk, chunk_blocks);
        xor_tweaks(chunk, scratch.tweaks.data(), chunk_blocks * block_size);
    }
}

}  // namespace

XtsCipher::XtsCipher(std::span<const std::uint8_t> key, XtsBackend backend)
{
    if (key.size() != xts_key_size)
        throw BadKeyLength("AES-256-XTS key is " + std::to_string(key.size()) + " bytes, expected " +
                           std::to_string(xts_key_size) + " (a 32-byte data key, then a 32-byte tweak key)");

    const std::size_t half = xts_key_size / 2;
    if (Botan::constant_time_compare(key.data(), key.data() + half, half))
        throw BadKeyLength("AES-256-XTS key is invalid: its data key and tweak key halves are equal, "
                           "which IEEE 1619-2018 forbids");

    data_cipher_ = Botan::BlockCipher::create_or_throw("AES-256");
    tweak_cipher_ = Botan::BlockCipher::create_or_throw("AES-256");
    data_cipher_->set_key(key.data(), half);
    tweak_cipher_->set_key(key.data() + half, half);

    if (backend == XtsBackend::fastest && xts_vaes::vaes_available()) {
        // RoundKeys needs 64-byte alignment, which the allocator does not promise.
        vaes_key_storage_.resize(sizeof(xts_vaes::RoundKeys) + alignof(xts_vaes::RoundKeys));
        void* start = vaes_key_storage_.data();
        std::size_t space = vaes_key_storage_.size();
        void* aligned = std::align(alignof(xts_vaes::RoundKeys), sizeof(xts_vaes::RoundKeys), start, space);
        auto* keys = new (aligned) xts_vaes::RoundKeys;
        xts_vaes::expand_key(key.data(), *keys);
        vaes_keys_ = keys;
    }
}

XtsCipher::~XtsCipher() = default;

void XtsCipher::encrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const
{
    process_units(*data_cipher_, *tweak_cipher_, vaes_keys_, Direction::encrypt, data.data(), data, first_sector);
}

void XtsCipher::decrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const
{
    process_units(*data_cipher_, *tweak_cipher_, vaes_keys_, Direction::decrypt, data.data(), data, first_sector);
}

void XtsCipher::encrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                   std::uint64_t first_sector) const
{
    check_same_size(input, output);
    process_units(*data_cipher_, *tweak_cipher_, vaes_keys_, Direction::encrypt, input.data(), output, first_sector);
}

void XtsCipher::decrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                   std::uint64_t first_sector) const
{
    check_same_size(input, output);
    process_units(*data_cipher_, *tweak_cipher_, vaes_keys_, Direction::decrypt, input.data(), output, first_sector);
}

void XtsCipher::encrypt_unit(std::span<std::uint8_t> data, std::span<const std::uint8_t, 16> tweak) const
{
    process_unit(*data_cipher_, *tweak_cipher_, Direction::encrypt, data, tweak);
}

void XtsCipher::decrypt_unit(std::span<std::uint8_t> data, std::span<const std::uint8_t, 16> tweak) const
{
    process_unit(*data_cipher_, *tweak_cipher_, Direction::decrypt, data, tweak);
}

}  // namespace vmcrypt
