#pragma once
// The LUKS1 anti-forensic (AF) splitter: a key of n bytes becomes `stripes` stripes of n bytes, and all of
// them are needed to recover it, so erasing any part of a key slot's material destroys the key.
//
// Split (LUKS1 specification, "AF-Splitter"): stripes 0 to s-2 are random. With d = 0, for each such
// stripe d = H(d XOR stripe), and the last stripe is d XOR key. Merge repeats the chain over stripes 0 to
// s-2 and XORs the result with the last stripe. H ("diffuse") hashes the buffer in digest-sized blocks:
// block i becomes hash(big-endian u32 i || block i), truncated to the block's length for a partial last
// block.

#include "core/crypto/hash_function.hpp"
#include "core/crypto/secure.hpp"

#include <cstdint>
#include <span>

namespace vmcrypt {

// Splits key into `stripes` stripes, taking stripes 0 to s-2 from `random_stripes`, which must hold
// (stripes - 1) * key.size() bytes. Returns stripes * key.size() bytes. Throws std::invalid_argument
// when key is empty, stripes is zero, or random_stripes has another length.
SecureBytes af_split(std::span<const std::uint8_t> key, std::uint32_t stripes, HashFunction hash,
                     std::span<const std::uint8_t> random_stripes);

// Splits key with random stripes from the system RNG.
SecureBytes af_split(std::span<const std::uint8_t> key, std::uint32_t stripes, HashFunction hash);

// Recovers a key of key_size bytes from stripes * key_size bytes of split material. Throws
// std::invalid_argument when key_size or stripes is zero, or the material has another length.
SecureBytes af_merge(std::span<const std::uint8_t> material, std::size_t key_size, std::uint32_t stripes,
                     HashFunction hash);

}  // namespace vmcrypt
