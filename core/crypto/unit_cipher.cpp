#include "core/crypto/unit_cipher.hpp"

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/crypto/xts.hpp"
#include "core/error.hpp"

namespace vmcrypt {

std::size_t unit_cipher_key_size(const std::string& name)
{
    if (name == cipher_aes_xts_plain64)
        return xts_key_size;
    if (name == cipher_aes_cbc_plain64)
        return legacy_qcow_key_size;
    throw UnsupportedInput("cipher \"" + name + "\" is not supported (expected " + cipher_aes_xts_plain64 + " or " +
                           cipher_aes_cbc_plain64 + ")");
}

std::unique_ptr<UnitCipher> make_unit_cipher(const std::string& name, std::span<const std::uint8_t> key)
{
    if (name == cipher_aes_xts_plain64)
        return std::make_unique<XtsCipher>(key);
    if (name == cipher_aes_cbc_plain64)
        return std::make_unique<AesCbcPlain64>(key);
    unit_cipher_key_size(name);  // throws for an unknown name
    return nullptr;
}

}  // namespace vmcrypt
