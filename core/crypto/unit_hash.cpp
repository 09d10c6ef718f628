// The crash journal's per-unit hash.
//
// The hash is XXH64 with seed 0, written from the xxHash specification (doc/xxhash_spec.md in the
// xxHash project) and checked against xxhsum -H1 from xxHash 0.8.1. It was chosen because it is a
// published, widely used 64-bit hash with good avalanche that needs only 64-bit integer multiplies,
// so it runs at several GB/s on one core without SIMD code or a library that vmcrypt does not
// already link.

#include "core/crypto/unit_hash.hpp"

#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

namespace vmcrypt {

namespace {

constexpr std::size_t unit_size = 512;

constexpr std::uint64_t prime1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t prime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t prime3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t prime4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t prime5 = 0x27D4EB2F165667C5ULL;

std::uint64_t load_le64(const std::uint8_t* bytes)
{
    std::uint64_t value;
    std::memcpy(&value, bytes, sizeof value);
    if constexpr (std::endian::native == std::endian::big)
        value = __builtin_bswap64(value);
    return value;
}

std::uint32_t load_le32(const std::uint8_t* bytes)
{
    std::uint32_t value;
    std::memcpy(&value, bytes, sizeof value);
    if constexpr (std::endian::native == std::endian::big)
        value = __builtin_bswap32(value);
    return value;
}

std::uint64_t round(std::uint64_t accumulator, std::uint64_t input)
{
    accumulator += input * prime2;
    accumulator = std::rotl(accumulator, 31);
    return accumulator * prime1;
}

std::uint64_t merge_round(std::uint64_t hash, std::uint64_t accumulator)
{
    hash ^= round(0, accumulator);
    return hash * prime1 + prime4;
}

std::uint64_t avalanche(std::uint64_t hash)
{
    hash ^= hash >> 33;
    hash *= prime2;
    hash ^= hash >> 29;
    hash *= prime3;
    hash ^= hash >> 32;
    return hash;
}

// XXH64 of any length with seed 0.
std::uint64_t xxh64(const std::uint8_t* input, std::size_t length)
{
    const std::uint8_t* const end = input + length;
    const std::uint8_t* p = input;
    std::uint64_t hash;

    if (length >= 32) {
        // Four independent lanes over 32-byte stripes.
        std::uint64_t v1 = prime1 + prime2;
        std::uint64_t v2 = prime2;
        std::uint64_t v3 = 0;
        std::uint64_t v4 = 0 - prime1;
        const std::uint8_t* const last_stripe = end - 32;
        do {
            v1 = round(v1, load_le64(p));
            v2 = round(v2, load_le64(p + 8));
            v3 = round(v3, load_le64(p + 16));
            v4 = round(v4, load_le64(p + 24));
            p += 32;
        } while (p <= last_stripe);

        hash = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
        hash = merge_round(hash, v1);
        hash = merge_round(hash, v2);
        hash = merge_round(hash, v3);
        hash = merge_round(hash, v4);
    } else {
        hash = prime5;
    }

    hash += length;

    // The tail of fewer than 32 bytes: 8-byte words, then one 4-byte word, then single bytes.
    while (end - p >= 8) {
        hash ^= round(0, load_le64(p));
        hash = std::rotl(hash, 27) * prime1 + prime4;
        p += 8;
    }
    if (end - p >= 4) {
        hash ^= std::uint64_t{load_le32(p)} * prime1;
        hash = std::rotl(hash, 23) * prime2 + prime3;
        p += 4;
    }
    while (p < end) {
        hash ^= *p * prime5;
        hash = std::rotl(hash, 11) * prime1;
        ++p;
    }

    return avalanche(hash);
}

}  // namespace

// Hashes a span of any length, although the journal only hashes 512-byte units.
std::uint64_t unit_hash(std::span<const std::uint8_t> unit)
{
    return xxh64(unit.data(), unit.size());
}

void hash_units(std::span<const std::uint8_t> data, std::span<std::uint64_t> out)
{
    if (data.size() % unit_size != 0 || out.size() != data.size() / unit_size)
        throw std::invalid_argument("hash_units: " + std::to_string(data.size()) + " bytes of data and " +
                                    std::to_string(out.size()) + " output slots do not match; the data must be " +
                                    std::to_string(unit_size) + "-byte units, one slot per unit");

    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = xxh64(data.data() + i * unit_size, unit_size);
}

}  // namespace vmcrypt
