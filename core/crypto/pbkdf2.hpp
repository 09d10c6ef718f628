#pragma once
// PBKDF2 (RFC 8018 section 5.2) with HMAC over SHA-1, SHA-256 or SHA-512, as LUKS1 uses it for key slots
// and the master-key digest.

#include "core/crypto/hash_function.hpp"
#include "core/crypto/secure.hpp"

#include <cstdint>
#include <span>

namespace vmcrypt {

// Derives `length` bytes from password and salt with `iterations` rounds of HMAC-`hash`. Throws
// std::invalid_argument when iterations or length is zero; callers that read an iteration count from a
// file check it first and report the field.
//
// NOTE: no upper bound on iterations: a LUKS1 header may ask for up to 2^32 - 1 rounds, which takes
// hours, as it does in cryptsetup and QEMU.
SecureBytes pbkdf2_hmac(HashFunction hash, std::span<const std::uint8_t> password,
                        std::span<const std::uint8_t> salt, std::uint32_t iterations, std::size_t length);

}  // namespace vmcrypt
