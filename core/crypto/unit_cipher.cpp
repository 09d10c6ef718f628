#include "core/crypto/unit_cipher.hpp"

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/crypto/xts.hpp"
#include "core/error.hpp"

#include <cstring>
#include <stdexcept>

namespace vmcrypt {

void check_same_size(std::span<const std::uint8_t> input, std::span<const std::uint8_t> output)
{
    if (input.size() != output.size())
        throw std::invalid_argument("unit cipher: input of " + std::to_string(input.size()) + " bytes for an output of " +
                                    std::to_string(output.size()) + " bytes");
}

void UnitCipher::encrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                    std::uint64_t first_sector) const
{
    check_same_size(input, output);
    if (!input.empty())
        std::memcpy(output.data(), input.data(), input.size());
    encrypt_units(output, first_sector);
}

void UnitCipher::decrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                    std::uint64_t first_sector) const
{
    check_same_size(input, output);
    if (!input.empty())
        std::memcpy(output.data(), input.data(), input.size());
    decrypt_units(output, first_sector);
}

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
