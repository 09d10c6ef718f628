#pragma once
// The encryption record: what a disk stores about its encryption, format-independent. A format keeps it
// as RecordFields (VMDK: ddb.vmcrypt.* lines). The record MAC, keyed from the DEK, covers every other field,
// so a changed cipher, unit size, tweak rule, key slot or state is detected before any data is touched.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"
#include "core/keys/key_slot.hpp"

#include <optional>
#include <string>
#include <vector>

namespace vmcrypt {

// rekeying: a deep rekey is rewriting the data from the previous DEK to the current one.
enum class RecordState { encrypting, encrypted, decrypting, rekeying };

std::string to_string(RecordState state);

inline constexpr int record_version = 1;
inline constexpr const char* record_cipher = "aes-xts-plain64";
// The cipher of a record that only exists while vmcrypt decrypts a legacy qcow AES image (crypt
// method 1): AES-128-CBC with the guest sector as IV, dekBits 128, state decrypting.
inline constexpr const char* legacy_record_cipher = "aes-cbc-plain64";
// Key slot ids are 0 to max_key_slots - 1, stored as ddb.vmcrypt.keySlot.<id>.
inline constexpr std::uint32_t max_key_slots = 32;

struct EncryptionRecord {
    RecordState state = RecordState::encrypting;
    std::string cipher = record_cipher;
    unsigned dek_bits = 512;
    unsigned unit_size = 512;
    std::string tweak;                 // "guest-sector" (VMDK) or "host-sector" (qcow2)
    std::string zero_units = "plain";  // "plain": all-zero plaintext units are stored as zeros; or "encrypted"
    std::vector<KeySlot> key_slots;
    // The id of each slot of key_slots, by position. Ids stay with their slot when another slot is
    // removed, so an admin's "slot 2" keeps meaning the same key. Slots appended to key_slots beyond
    // key_slot_ids get the next free ids (see slot_ids()).
    std::vector<std::uint32_t> key_slot_ids;
    // During a deep rekey (state rekeying): the previous DEK wrapped (RFC 3394) under a key derived
    // from the current DEK, so that the key of any current slot suffices to finish the rewrite.
    std::vector<std::uint8_t> previous_dek;
    std::string data_check;            // base64 check value of the ciphertext, set when encryption completes
    std::vector<std::uint8_t> mac;     // HMAC-SHA-256 over every other field

    // Validates every field; `where` names the file for errors. Throws InvalidInput/UnsupportedInput.
    static EncryptionRecord from_fields(const RecordFields& fields, const std::string& where);
    RecordFields to_fields() const;

    // The id of every slot of key_slots, by position.
    std::vector<std::uint32_t> slot_ids() const;
    // Appends a slot under the next free id and returns that id. Throws InvalidInput when all
    // max_key_slots ids are taken.
    std::uint32_t add_key_slot(KeySlot slot);
    // Removes the slot with this id; returns false when there is none.
    bool remove_key_slot(std::uint32_t id);
    // The position in key_slots of the slot with this id, or nullopt.
    std::optional<std::size_t> slot_position(std::uint32_t id) const;

    // Store the previous DEK wrapped under a key derived from `dek` (the current DEK), and unwrap it
    // again. The unwrap throws InvalidInput when previous_dek is missing or does not unwrap.
    void wrap_previous_dek(const SecureBytes& previous, const SecureBytes& dek);
    SecureBytes unwrap_previous_dek(const SecureBytes& dek, const std::string& where) const;

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
