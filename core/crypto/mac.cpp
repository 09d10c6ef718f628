// HMAC-SHA-256, SHA-256 and constant-time comparison on Botan.

#include "core/crypto/mac.hpp"

#include <botan/hash.h>
#include <botan/mac.h>
#include <botan/mem_ops.h>

namespace vmcrypt {

Mac hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> message)
{
    return hmac_sha256(key, {message});
}

Mac hmac_sha256(std::span<const std::uint8_t> key, std::initializer_list<std::span<const std::uint8_t>> parts)
{
    const auto hmac = Botan::MessageAuthenticationCode::create_or_throw("HMAC(SHA-256)");
    hmac->set_key(key.data(), key.size());
    for (std::span<const std::uint8_t> part : parts)
        hmac->update(part.data(), part.size());

    Mac mac;
    hmac->final(mac.data());
    return mac;
}

// Returns false at once when the lengths differ, because lengths are not secret here. The bytes are
// compared in time that does not depend on where they differ.
bool equal_constant_time(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b)
{
    if (a.size() != b.size())
        return false;
    return Botan::constant_time_compare(a.data(), b.data(), a.size());
}

std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> message)
{
    const auto hash = Botan::HashFunction::create_or_throw("SHA-256");
    hash->update(message.data(), message.size());

    std::array<std::uint8_t, 32> digest;
    hash->final(digest.data());
    return digest;
}

}  // namespace vmcrypt
