#pragma once
// The encryption record: what a disk stores about its encryption, format-independent. A format keeps it
// as RecordFields (VMDK: ddb.vmcrypt.* lines). The record MAC, keyed from the DEK, covers every other field,
// so a changed cipher, unit size, tweak rule, key slot or state is detected before any data is touched.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"
#include "core/keys/key_slot.hpp"

#include <string>
#include <vector>

namespace vmcrypt {

enum class RecordState { encrypting, encrypted, decrypting };

std::string to_string(RecordState state);

inline constexpr int record_version = 1;
inline constexpr const char* record_cipher = "aes-xts-plain64";

struct EncryptionRecord {
    RecordState state = RecordState::encrypting;
    std::string cipher = record_cipher;
    unsigned dek_bits = 512;
    unsigned unit_size = 512;
    std::string tweak;                 // "guest-sector" (VMDK) or "host-sector" (qcow2)
    std::string zero_units = "plain";  // "plain": all-zero plaintext units are stored as zeros; or "encrypted"
    std::vector<KeySlot> key_slots;
    std::string data_check;            // base64 check value of the ciphertext, set when encryption completes
    std::vector<std::uint8_t> mac;     // HMAC-SHA-256 over every other field

    // Validates every field; `where` names the file for errors. Throws InvalidInput/UnsupportedInput.
    static EncryptionRecord from_fields(const RecordFields& fields, const std::string& where);
    RecordFields to_fields() const;

    // Sets mac from the DEK. verify_mac() throws InvalidInput naming `where` on mismatch.
    void seal(const SecureBytes& dek);
    void verify_mac(const SecureBytes& dek, const std::string& where) const;

private:
    std::vector<std::uint8_t> compute_mac(const SecureBytes& dek) const;
};

// Serialization of fields as "key=value\n" lines, used by the journal to carry the record.
std::string fields_to_text(const RecordFields& fields);
RecordFields fields_from_text(const std::string& text);

}  // namespace vmcrypt
