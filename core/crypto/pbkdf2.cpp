// PBKDF2 on Botan's PBKDF family, which takes any HMAC and any iteration count.

#include "core/crypto/pbkdf2.hpp"

#include <botan/pwdhash.h>

#include <stdexcept>
#include <string>

namespace vmcrypt {

SecureBytes pbkdf2_hmac(HashFunction hash, std::span<const std::uint8_t> password,
                        std::span<const std::uint8_t> salt, std::uint32_t iterations, std::size_t length)
{
    if (iterations == 0)
        throw std::invalid_argument("PBKDF2: the iteration count must be at least 1");
    if (length == 0)
        throw std::invalid_argument("PBKDF2: the output length must be at least 1 byte");

    const auto family =
        Botan::PasswordHashFamily::create_or_throw("PBKDF2(HMAC(" + std::string(botan_hash_name(hash)) + "))");
    const auto pbkdf2 = family->from_iterations(iterations);
    SecureBytes output(length);
    pbkdf2->derive_key(output.data(), output.size(), reinterpret_cast<const char*>(password.data()),
                       password.size(), salt.data(), salt.size());
    return output;
}

}  // namespace vmcrypt
