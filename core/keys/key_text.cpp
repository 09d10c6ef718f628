#include "core/keys/key_text.hpp"

#include "core/crypto/key_wrap.hpp"
#include "core/crypto/mac.hpp"
#include "core/error.hpp"

#include <botan/hex.h>

#include <cctype>

namespace vmcrypt {

SecureBytes parse_kek_text(const std::string& content, const std::string& where)
{
    if (content.size() == kek_size)
        return SecureBytes(content.begin(), content.end());

    std::string_view hex(content);
    if (!hex.empty() && hex.back() == '\n')
        hex.remove_suffix(1);
    if (!hex.empty() && hex.back() == '\r')
        hex.remove_suffix(1);
    bool all_hex = hex.size() == 2 * kek_size;
    for (char c : hex)
        all_hex = all_hex && std::isxdigit(static_cast<unsigned char>(c));
    if (!all_hex)
        throw KeyUnavailable(where + ": invalid KEK file: expected 32 raw bytes or 64 hex digits, found " +
                             std::to_string(content.size()) + " bytes of another form");
    return Botan::hex_decode_locked(hex.data(), hex.size());
}

std::string kek_fingerprint(const SecureBytes& kek)
{
    static constexpr std::string_view label = "vmcrypt kek id v1";
    Mac mac = hmac_sha256(kek, {reinterpret_cast<const std::uint8_t*>(label.data()), label.size()});
    return Botan::hex_encode(mac.data(), 8, false);
}

}  // namespace vmcrypt
