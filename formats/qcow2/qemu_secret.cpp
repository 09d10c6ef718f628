#include "formats/qcow2/qemu_secret.hpp"

#include "core/crypto/kdf.hpp"

#include <botan/base64.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace vmcrypt::qcow2 {

namespace {

constexpr std::size_t secret_key_size = 32;


}  // namespace

bool is_qemu_object_id(std::string_view id)
{
    const auto is_letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    if (id.empty() || !is_letter(id.front()))
        return false;
    return std::all_of(id.begin(), id.end(), [&](char c) {
        return is_letter(c) || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    });
}

SecureBytes derive_qemu_secret(const SecureBytes& dek)
{
    if (dek.empty())
        throw std::invalid_argument("derive_qemu_secret: the DEK is empty");
    const SecureBytes key = hkdf_sha256(dek, qemu_secret_label, secret_key_size);

    static constexpr char digits[] = "0123456789abcdef";
    SecureBytes text;
    text.reserve(2 * key.size());
    for (const std::uint8_t byte : key) {
        text.push_back(static_cast<std::uint8_t>(digits[byte >> 4]));
        text.push_back(static_cast<std::uint8_t>(digits[byte & 0xf]));
    }
    return text;
}

SecureBytes qemu_secret_object(const SecureBytes& secret, std::string_view id)
{
    if (!is_qemu_object_id(id))
        throw std::invalid_argument("qemu_secret_object: \"" + std::string(id) +
                                    "\" is not a QEMU object id (a letter, then letters, digits, '-', '.' and '_')");
    constexpr std::string_view prefix = "secret,id=";
    constexpr std::string_view data = ",data=";
    SecureBytes text;
    text.reserve(prefix.size() + id.size() + data.size() + secret.size());
    text.insert(text.end(), prefix.begin(), prefix.end());
    text.insert(text.end(), id.begin(), id.end());
    text.insert(text.end(), data.begin(), data.end());
    text.insert(text.end(), secret.begin(), secret.end());
    return text;
}

SecureBytes libvirt_secret_value(const SecureBytes& secret)
{
    SecureBytes text(Botan::base64_encode_max_output(secret.size()));
    size_t consumed = 0;
    const std::size_t written =
        Botan::base64_encode(reinterpret_cast<char*>(text.data()), secret.data(), secret.size(), consumed, true);
    text.resize(written);
    return text;
}

}  // namespace vmcrypt::qcow2
