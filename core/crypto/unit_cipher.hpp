#pragma once
// A cipher over 512-byte data units, each with its own sector number as tweak or IV. The rewrite engine
// transforms data through this interface, so it does not depend on the cipher mode: AES-256-XTS for
// everything vmcrypt writes, AES-128-CBC for the legacy qcow AES images it only decrypts.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace vmcrypt {

inline constexpr const char* cipher_aes_xts_plain64 = "aes-xts-plain64";
inline constexpr const char* cipher_aes_cbc_plain64 = "aes-cbc-plain64";

class UnitCipher {
public:
    virtual ~UnitCipher() = default;

    // Transform data in place. data.size() must be a multiple of 512; unit i uses sector first_sector + i.
    // Concurrent calls on one object are allowed. Throw std::invalid_argument on a partial unit or when
    // the last unit's sector number would exceed 2^64 - 1.
    virtual void encrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const = 0;
    virtual void decrypt_units(std::span<std::uint8_t> data, std::uint64_t first_sector) const = 0;

    // Transform `input` into `output`, which must have the same size and must not overlap it. The rewrite
    // engine reads old content through a file mapping and transforms it straight into its write buffer.
    // This default copies, then transforms in place. Throws std::invalid_argument on a size mismatch.
    virtual void encrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                    std::uint64_t first_sector) const;
    virtual void decrypt_units_from(std::span<const std::uint8_t> input, std::span<std::uint8_t> output,
                                    std::uint64_t first_sector) const;
};

// Throws std::invalid_argument unless `input` and `output` have the same size.
void check_same_size(std::span<const std::uint8_t> input, std::span<const std::uint8_t> output);

// Creates the cipher that a record's cipher field names: "aes-xts-plain64" (64-byte key) or
// "aes-cbc-plain64" (16-byte key). Throws UnsupportedInput for another name, BadKeyLength for a key of
// the wrong size.
std::unique_ptr<UnitCipher> make_unit_cipher(const std::string& name, std::span<const std::uint8_t> key);

// The key size in bytes of a cipher that make_unit_cipher() supports. Throws UnsupportedInput otherwise.
std::size_t unit_cipher_key_size(const std::string& name);

}  // namespace vmcrypt
