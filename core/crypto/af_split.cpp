// The LUKS1 AF splitter on Botan's hash functions.

#include "core/crypto/af_split.hpp"

#include "core/crypto/random.hpp"

#include <botan/hash.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>

namespace vmcrypt {

namespace {

void check_sizes(std::size_t key_size, std::uint32_t stripes)
{
    if (key_size == 0)
        throw std::invalid_argument("AF splitter: the key is empty");
    if (stripes == 0)
        throw std::invalid_argument("AF splitter: the stripe count must be at least 1");
}

// Replaces each digest-sized block i of buffer with hash(BE32(i) || block), truncated for a short last block.
void diffuse(Botan::HashFunction& hash, std::span<std::uint8_t> buffer)
{
    const std::size_t block_size = hash.output_length();
    SecureBytes digest(block_size);
    std::uint32_t index = 0;
    for (std::size_t offset = 0; offset < buffer.size(); offset += block_size, ++index) {
        const std::size_t length = std::min(block_size, buffer.size() - offset);
        const std::array<std::uint8_t, 4> index_be = {
            static_cast<std::uint8_t>(index >> 24), static_cast<std::uint8_t>(index >> 16),
            static_cast<std::uint8_t>(index >> 8), static_cast<std::uint8_t>(index)};
        hash.update(index_be.data(), index_be.size());
        hash.update(buffer.data() + offset, length);
        hash.final(digest.data());
        std::copy_n(digest.begin(), length, buffer.begin() + static_cast<std::ptrdiff_t>(offset));
    }
}

// Runs the chain d = diffuse(d XOR stripe) over the first `count` stripes of material.
SecureBytes chain_stripes(Botan::HashFunction& hash, std::span<const std::uint8_t> material,
                          std::size_t key_size, std::size_t count)
{
    SecureBytes d(key_size, 0);
    for (std::size_t stripe = 0; stripe < count; ++stripe) {
        const std::uint8_t* source = material.data() + stripe * key_size;
        for (std::size_t i = 0; i < key_size; ++i)
            d[i] ^= source[i];
        diffuse(hash, d);
    }
    return d;
}

}  // namespace

SecureBytes af_split(std::span<const std::uint8_t> key, std::uint32_t stripes, HashFunction hash,
                     std::span<const std::uint8_t> random_stripes)
{
    check_sizes(key.size(), stripes);
    const std::size_t random_size = (std::size_t{stripes} - 1) * key.size();
    if (random_stripes.size() != random_size)
        throw std::invalid_argument("AF splitter: " + std::to_string(random_stripes.size()) +
                                    " bytes of random stripes, expected " + std::to_string(random_size));

    const auto hash_function = Botan::HashFunction::create_or_throw(std::string(botan_hash_name(hash)));
    SecureBytes material(std::size_t{stripes} * key.size());
    std::copy(random_stripes.begin(), random_stripes.end(), material.begin());
    const SecureBytes d = chain_stripes(*hash_function, material, key.size(), stripes - 1);

    std::uint8_t* last = material.data() + random_size;
    for (std::size_t i = 0; i < key.size(); ++i)
        last[i] = d[i] ^ key[i];
    return material;
}

SecureBytes af_split(std::span<const std::uint8_t> key, std::uint32_t stripes, HashFunction hash)
{
    check_sizes(key.size(), stripes);
    const SecureBytes random_stripes = random_bytes((std::size_t{stripes} - 1) * key.size());
    return af_split(key, stripes, hash, random_stripes);
}

SecureBytes af_merge(std::span<const std::uint8_t> material, std::size_t key_size, std::uint32_t stripes,
                     HashFunction hash)
{
    check_sizes(key_size, stripes);
    const std::size_t material_size = std::size_t{stripes} * key_size;
    if (material.size() != material_size)
        throw std::invalid_argument("AF splitter: " + std::to_string(material.size()) +
                                    " bytes of split material, expected " + std::to_string(material_size));

    const auto hash_function = Botan::HashFunction::create_or_throw(std::string(botan_hash_name(hash)));
    SecureBytes key = chain_stripes(*hash_function, material, key_size, stripes - 1);
    const std::uint8_t* last = material.data() + (material_size - key_size);
    for (std::size_t i = 0; i < key_size; ++i)
        key[i] ^= last[i];
    return key;
}

}  // namespace vmcrypt
