#pragma once
// Key derivation: HKDF-SHA-256 for subkeys of the DEK, Argon2id for passphrases.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <span>
#include <string_view>

namespace vmcrypt {

// HKDF-SHA-256 (RFC 5869) with an empty salt and `label` as the info string. Throws
// std::invalid_argument unless length is 1 to 8160 (255 * 32) bytes.
SecureBytes hkdf_sha256(std::span<const std::uint8_t> input_key, std::string_view label, std::size_t length);

struct Argon2Parameters {
    std::uint32_t memory_kib = 65536;  // m, in KiB
    std::uint32_t iterations = 3;      // t
    std::uint32_t parallelism = 1;     // p (lanes)
};

// Argon2id (RFC 9106). Throws InvalidInput on parameters outside Argon2's limits (memory below 8*p KiB,
// zero iterations or lanes) and on memory above 4 GiB, so a crafted record cannot exhaust the machine.
// Also throws InvalidInput on more than 128 lanes (Botan 2's limit), and std::invalid_argument on a
// length below 4 bytes.
SecureBytes argon2id(std::span<const std::uint8_t> passphrase, std::span<const std::uint8_t> salt,
                     const Argon2Parameters& parameters, std::size_t length);

}  // namespace vmcrypt
