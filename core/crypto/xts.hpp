#pragma once
// AES-256-XTS (IEEE 1619) over 512-byte data units, with the plain64 tweak: the unit's sector number as a
// 64-bit little-endian integer, zero-padded to 16 bytes.
//
// Units are processed in batches: the initial tweaks of many units are computed with one multi-block AES
// call, and the XOR-encrypt-XOR passes run over cache-sized chunks. Botan's XTS mode processes one
// message per call and is several times slower on 512-byte units.

#include "core/crypto/secure.hpp"
#include "core/crypto/unit_cipher.hpp"

#include <botan/block_cipher.h>

#include <cstdint>
#include <memory>
#include <span>

namespace vmcrypt {

inline constexpr std::size_t xts_unit_size = 512;
inline constexpr std::size_t xts_key_size = 64;  // two AES-256 keys: data key, then tweak key

namespace xts_vaes {
struct RoundKeys;
}

// The code that encrypts the data blocks of encrypt_units() and decrypt_units(). fastest takes VAES on
// 512-bit vectors where the CPU has AVX-512F, AVX-512BW and VAES, and Botan's AES otherwise. botan_aes
// always takes Botan's AES, so that tests can compare the two.
enum class XtsBackend { fastest, botan_aes };

class XtsCipher final : public UnitCipher {
public:
    // Throws BadKeyLength unless key is 64 bytes; throws BadKeyLength if the two halves are equal
    // (IEEE 1619-2018 and FIPS 140 forbid key1 == key2).
    explicit XtsCipher(std::span<const std::uint8_t> key, XtsBackend backend = XtsBackend::fastest);
    ~XtsCipher() override;
    XtsCipher(const XtsCipher&) = delete;
    XtsCipher& operator=(const XtsCipher&) = delete;

    // Encrypts data in place. data.size() must be a multiple of 512; unit i uses tweak first_sector + i.
    // Thread-safe: concurrent calls on one object are allowed. Throws std::invalid_argument on a partial
    // unit or when the last unit's sector number would exceed 2^64 - 1.
    void encrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const override;
    void decrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const override;

    // Out of place, without a copy on CPUs with VAES.
    void encrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                            std::uint64_t first_sector) const override;
    void decrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                            std::uint64_t first_sector) const override;

    // One data unit of any multiple of 16 bytes with an explicit 16-byte tweak value; for known-answer
    // tests with the IEEE 1619 vectors, whose units are not all 512 bytes. Throws std::invalid_argument
    // unless the unit is 1 to 2^20 blocks (no ciphertext stealing).
    void encrypt_unit(std::span<std::uint8_t> data, std::span<const std::uint8_t, 16> tweak) const;
    void decrypt_unit(std::span<std::uint8_t> data, std::span<const std::uint8_t, 16> tweak) const;

    // Whether encrypt_units() and decrypt_units() run on VAES.
    bool uses_vaes() const noexcept { return vaes_keys_ != nullptr; }

private:
    std::unique_ptr<Botan::BlockCipher> data_cipher_;
    std::unique_ptr<Botan::BlockCipher> tweak_cipher_;
    // The data key's round keys for VAES, in Botan's locked, scrubbed memory; null without VAES.
    Botan::secure_vector<std::uint8_t> vaes_key_storage_;
    const xts_vaes::RoundKeys* vaes_keys_ = nullptr;
};

}  // namespace vmcrypt
