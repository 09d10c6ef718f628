#pragma once
// AES key wrap (RFC 3394, NIST SP 800-38F "KW") of a DEK under a 256-bit KEK.

#include "core/crypto/secure.hpp"
#include "core/error.hpp"

#include <span>
#include <vector>

namespace vmcrypt {

// The KEK does not unwrap the blob: the RFC 3394 integrity check failed.
struct UnwrapFailed : WrongKey {
    explicit UnwrapFailed(const std::string& m) : WrongKey(m) {}
};

inline constexpr std::size_t kek_size = 32;

// Wraps key (a multiple of 8 bytes, at least 16) under kek (32 bytes). Throws BadKeyLength.
std::vector<std::uint8_t> wrap_key(const SecureBytes& kek, const SecureBytes& key);

// Unwraps; throws UnwrapFailed when the integrity check fails and BadKeyLength on bad sizes.
SecureBytes unwrap_key(const SecureBytes& kek, std::span<const std::uint8_t> wrapped);

}  // namespace vmcrypt
