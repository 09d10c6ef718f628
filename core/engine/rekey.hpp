#pragma once
// Key rotation and key slots of an encrypted disk.
//
// A shallow rekey wraps the same DEK under a new KEK and replaces the slot that the given key opened.
// Adding and removing a slot are the same kind of record-only change. All three go through
// commit_key_change(), so their cost does not depend on the disk's size.
//
// A deep rekey creates a new DEK and rewrites every allocated non-zero unit from the old DEK to the new
// one through the rewrite engine. Before the first unit changes, the record (state rekeying) holds the
// new DEK in its key slots and the old DEK wrapped under a key derived from the new one, so a key of
// the new slots is all a resume needs.

#include "core/engine/operation.hpp"
#include "core/record/encryption_record.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt {

enum class SlotChange {
    replace,  // shallow rekey: seal under the new keys and remove the slot the given key opened
    add,      // seal under the new keys and keep every slot
    remove,   // remove the slot `slot_id`
};

struct KeySlotRequest {
    SlotChange change = SlotChange::replace;
    std::uint32_t slot_id = 0;  // for SlotChange::remove
};

struct SlotDescription {
    std::uint32_t id = 0;
    std::string type;     // keystore, key-file, passphrase, ...
    std::string kek_id;   // "kek" parameter, "<provider>/<uid>" for a kmip slot, empty for a passphrase slot
    std::string created;  // ISO 8601 UTC; empty for slots made before vmcrypt recorded creation times

    std::string summary() const;  // "slot 1: keystore kek=<uuid>, created <time>"
};

struct KeySlotReport {
    std::filesystem::path disk;
    std::vector<SlotDescription> added;
    std::vector<SlotDescription> removed;
    std::vector<SlotDescription> slots;  // every slot after the change
    // A crash had interrupted a key-slot change, and this run finished that one instead.
    bool finished_interrupted = false;
};

// The slots of a record, by id.
std::vector<SlotDescription> describe_slots(const EncryptionRecord& record);

// Changes the key slots of an encrypted disk. `unlock` must open one of its slots. `seal` gives one new
// slot per source (for replace and add). Rejects a new key whose KEK already has a slot on the disk,
// and the removal of the last slot. Nothing changes when it fails before the journal exists.
KeySlotReport change_key_slots(const std::filesystem::path& disk_path, KeySources& unlock, KeySources& seal,
                               const KeySlotRequest& request, const DiskOpener& opener);

// Runs or resumes a deep rekey. `unlock` must open the disk's slots. With `seal` empty the new DEK is
// sealed under the same KEKs: every slot is resealed by the source that opens it, so `unlock` must
// open all of them. With `seal` given, its sources replace the slot that `unlock` opened first and the
// other slots are resealed. A resume unlocks the new DEK with the sources of both lists.
OperationReport run_deep_rekey(const std::filesystem::path& disk_path, KeySources& unlock, KeySources& seal,
                               RewriteOptions options, const DiskOpener& opener);

}  // namespace vmcrypt
