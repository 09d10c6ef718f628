// CBC decryption of many sectors with one multi-block AES call: unlike CBC encryption, the block
// decryptions do not depend on each other, so only the XOR with the previous ciphertext block (or the
// sector's IV) runs block by block. Encryption chains each block into the next, one AES call a block.

#include "core/crypto/aes_cbc_plain64.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace vmcrypt {

namespace {

constexpr std::size_t block_size = 16;
// Sectors decrypted per AES call; bounds the copy of the ciphertext that CBC needs.
constexpr std::size_t sectors_per_batch = 64;

void check_sectors(std::span<const std::uint8_t> data, std::uint64_t first_sector)
{
    if (data.size() % legacy_qcow_sector_size != 0)
        throw std::invalid_argument("AES-CBC: " + std::to_string(data.size()) +
                                    " bytes is not a whole number of 512-byte sectors");
    const std::uint64_t sector_count = data.size() / legacy_qcow_sector_size;
    if (sector_count > 0 && sector_count - 1 > std::numeric_limits<std::uint64_t>::max() - first_sector)
        throw std::invalid_argument("AES-CBC: sector number overflows 64 bits");
}

// The IV of a sector: its number, little-endian, in the first 8 of 16 bytes.
void xor_iv(std::uint8_t* block, std::uint64_t sector)
{
    for (std::size_t i = 0; i < 8; ++i)
        block[i] ^= static_cast<std::uint8_t>(sector >> (8 * i));
}

}  // namespace

SecureBytes legacy_qcow_key(std::span<const std::uint8_t> password)
{
    SecureBytes key(legacy_qcow_key_size, 0);
    std::copy_n(password.begin(), std::min(password.size(), legacy_qcow_key_size), key.begin());
    return key;
}

AesCbcPlain64::AesCbcPlain64(std::span<const std::uint8_t> key)
{
    if (key.size() != legacy_qcow_key_size)
        throw BadKeyLength("AES-128-CBC: key of " + std::to_string(key.size()) + " bytes, expected " +
                           std::to_string(legacy_qcow_key_size));
    cipher_ = Botan::BlockCipher::create_or_throw("AES-128");
    cipher_->set_key(key.data(), key.size());
}

AesCbcPlain64::~AesCbcPlain64() = default;

void AesCbcPlain64::encrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const
{
    check_sectors(data, first_sector);
    for (std::size_t offset = 0; offset < data.size(); offset += block_size) {
        std::uint8_t* block = data.data() + offset;
        if (offset % legacy_qcow_sector_size == 0) {
            xor_iv(block, first_sector + offset / legacy_qcow_sector_size);
        } else {
            const std::uint8_t* previous = block - block_size;
            for (std::size_t i = 0; i < block_size; ++i)
                block[i] ^= previous[i];
        }
        cipher_->encrypt(block);
    }
}

void AesCbcPlain64::decrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const
{
    check_sectors(data, first_sector);

    std::vector<std::uint8_t> ciphertext(sectors_per_batch * legacy_qcow_sector_size);
    for (std::size_t done = 0; done < data.size();) {
        const std::size_t length = std::min(ciphertext.size(), data.size() - done);
        std::uint8_t* batch = data.data() + done;
        std::copy_n(batch, length, ciphertext.begin());
        cipher_->decrypt_n(batch, batch, length / block_size);

        for (std::size_t offset = 0; offset < length; offset += block_size) {
            std::uint8_t* block = batch + offset;
            if (offset % legacy_qcow_sector_size == 0) {
                xor_iv(block, first_sector + (done + offset) / legacy_qcow_sector_size);
            } else {
                const std::uint8_t* previous = ciphertext.data() + offset - block_size;
                for (std::size_t i = 0; i < block_size; ++i)
                    block[i] ^= previous[i];
            }
        }
        done += length;
    }
}

}  // namespace vmcrypt
