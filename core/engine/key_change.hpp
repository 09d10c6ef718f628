#pragma once
// Crash-safe changes of the key slots alone (shallow rekey, slot added or removed): the data and the
// DEK stay, only the encryption record changes.
//
// The new descriptor bytes go into a journal (operation key_change, one finalize entry) before they
// are written in place, because a descriptor write of more than one 512-byte sector can be torn. The
// journal's record carries the slots of the old record and of the new one, so after a crash at any
// moment a key of either unlocks the journal. Any vmcrypt command given such a key then finishes the
// change first (finish_key_change). The cost depends on the descriptor's size, not the disk's.

#include "core/disk.hpp"
#include "core/engine/operation.hpp"
#include "core/engine/rekey.hpp"
#include "core/record/encryption_record.hpp"

#include <filesystem>
#include <optional>

namespace vmcrypt {

// Replaces the disk's record `before` with `after` (both sealed with `dek`, the same DEK) through the
// journal. The disk is open read-write and locked. A failure before the journal exists changed nothing.
void commit_key_change(Disk& disk, const SecureBytes& dek, const EncryptionRecord& before,
                       const EncryptionRecord& after);

// Gives a disk with foreign encryption that vmcrypt can adopt (Disk::foreign_adoptable(), a QEMU LUKS
// qcow2) vmcrypt's key slots without rewriting its data. The foreign data key, unlocked with the
// passphrase among `unlock`, becomes the DEK, and `seal` gives one slot per source. The record goes
// through commit_key_change(). Its journal also contains a passphrase slot for the foreign passphrase
// (never written to the disk), so re-running the command with the same options finishes an
// interrupted adoption. The disk is open read-write and locked; `report` receives the slots.
void adopt_foreign_encryption(Disk& disk, KeySources& unlock, KeySources& seal, KeySlotReport& report,
                              const std::string& where);

// Finishes a key change that a crash interrupted, when the journal next to `metadata_file` records
// one: unlocks it with `sources`, writes the journaled record (also over a torn descriptor) and deletes
// the journal. Returns the DEK it unlocked, or nullopt when no key change is pending. Opens the disk
// with `opener` and closes it again before returning.
std::optional<SecureBytes> finish_key_change(const std::filesystem::path& metadata_file,
                                             const std::vector<KeySource*>& sources, const DiskOpener& opener,
                                             const std::string& where);

}  // namespace vmcrypt
