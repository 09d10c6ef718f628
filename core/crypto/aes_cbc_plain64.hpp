#pragma once
// The legacy qcow AES method (qcow2 crypt method 1): AES-128-CBC over 512-byte sectors, with the IV the
// guest sector number as a 64-bit little-endian integer zero-padded to 16 bytes ("plain64"). QEMU takes
// the key straight from the password: its first 16 bytes, zero-padded when shorter. There is no salt, no
// KDF and no key check, so a wrong password decrypts to garbage without an error. vmcrypt only decrypts
// this method, so that such disks can be re-encrypted properly; encrypt_units() exists for tests and
// for the UnitCipher interface.

#include "core/crypto/secure.hpp"
#include "core/crypto/unit_cipher.hpp"

#include <botan/block_cipher.h>

#include <cstdint>
#include <memory>
#include <span>

namespace vmcrypt {

inline constexpr std::size_t legacy_qcow_key_size = 16;
inline constexpr std::size_t legacy_qcow_sector_size = 512;

// QEMU's key for a password: the first 16 bytes of it, zero-padded when shorter.
SecureBytes legacy_qcow_key(std::span<const std::uint8_t> password);

class AesCbcPlain64 final : public UnitCipher {
public:
    // Throws BadKeyLength unless key is 16 bytes.
    explicit AesCbcPlain64(std::span<const std::uint8_t> key);
    ~AesCbcPlain64() override;
    AesCbcPlain64(const AesCbcPlain64&) = delete;
    AesCbcPlain64& operator=(const AesCbcPlain64&) = delete;

    // Transform data in place. data.size() must be a multiple of 512, and sector i uses IV
    // first_sector + i. Throw std::invalid_argument on a partial sector or when the last sector number
    // would exceed 2^64 - 1.
    void encrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const override;
    void decrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const override;

private:
    std::unique_ptr<Botan::BlockCipher> cipher_;
};

}  // namespace vmcrypt
