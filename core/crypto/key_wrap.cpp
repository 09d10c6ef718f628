// AES key wrap (RFC 3394) of a DEK under a 256-bit KEK, on Botan's implementation.

#include "core/crypto/key_wrap.hpp"

#include <botan/exceptn.h>
#include <botan/rfc3394.h>
#include <botan/symkey.h>

#include <string>

namespace vmcrypt {

namespace {

void check_kek_size(const SecureBytes& kek)
{
    if (kek.size() != kek_size)
        throw BadKeyLength("AES key wrap: KEK is " + std::to_string(kek.size()) + " bytes, expected " +
                           std::to_string(kek_size) + " (AES-256)");
}

}  // namespace

std::vector<std::uint8_t> wrap_key(const SecureBytes& kek, const SecureBytes& key)
{
    check_kek_size(kek);
    // RFC 3394 wraps n >= 2 64-bit blocks of key data.
    if (key.size() < 16 || key.size() % 8 != 0)
        throw BadKeyLength("AES key wrap: key to wrap is " + std::to_string(key.size()) +
                           " bytes, but RFC 3394 needs a multiple of 8 bytes, at least 16");

    const SecureBytes wrapped = Botan::rfc3394_keywrap(key, Botan::SymmetricKey(kek));
    return std::vector<std::uint8_t>(wrapped.begin(), wrapped.end());
}

SecureBytes unwrap_key(const SecureBytes& kek, std::span<const std::uint8_t> wrapped)
{
    check_kek_size(kek);
    // A wrapped key is one 8-byte integrity block longer than the key, which is at least 16 bytes.
    if (wrapped.size() < 24 || wrapped.size() % 8 != 0)
        throw BadKeyLength("AES key unwrap: wrapped key is " + std::to_string(wrapped.size()) +
                           " bytes, but RFC 3394 output is a multiple of 8 bytes, at least 24");

    const Botan::secure_vector<std::uint8_t> wrapped_copy(wrapped.begin(), wrapped.end());
    try {
        return Botan::rfc3394_keyunwrap(wrapped_copy, Botan::SymmetricKey(kek));
    } catch (const Botan::Invalid_Authentication_Tag&) {
        throw UnwrapFailed("the key does not unwrap the data key (RFC 3394 integrity check failed)");
    }
}

}  // namespace vmcrypt
