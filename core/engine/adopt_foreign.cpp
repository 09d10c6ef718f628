// Adoption of foreign encryption: vmcrypt key slots for a disk that another product encrypted (a qcow2
// that QEMU encrypted with LUKS), without rewriting a byte of data.

#include "core/engine/data_check.hpp"
#include "core/engine/journal.hpp"
#include "core/engine/key_change.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/error.hpp"
#include "core/log.hpp"

#include <algorithm>

namespace vmcrypt {

namespace {

// The lowest slot id that `record` does not use.
std::uint32_t free_slot_id(const EncryptionRecord& record)
{
    const std::vector<std::uint32_t> ids = record.slot_ids();
    std::uint32_t id = 0;
    while (std::find(ids.begin(), ids.end(), id) != ids.end())
        ++id;
    return id;
}

}  // namespace

void adopt_foreign_encryption(Disk& disk, KeySources& unlock, KeySources& seal, KeySlotReport& report,
                              const std::string& where)
{
    // Validate everything and unlock before the first write.
    KeySource* passphrase_source = nullptr;
    for (auto& source : unlock)
        if (!passphrase_source && source->passphrase())
            passphrase_source = source.get();
    std::optional<SecureBytes> unlocked =
        disk.unlock_foreign(passphrase_source ? passphrase_source->passphrase() : nullptr);
    if (!unlocked)
        throw WrongDiskState(where + ": the disk's foreign encryption cannot be unlocked by vmcrypt; nothing was written");
    const SecureBytes& dek = *unlocked;
    check_relations(disk, where, true);

    if (seal.empty())
        throw UsageError("keys add: no new key given; add --new-key-file, --new-passphrase-file, --new-keystore or "
                         "--new-kms-provider");
    for (auto& source : seal)
        source->check_ready();

    EncryptionRecord after;
    after.state = RecordState::encrypted;
    after.tweak = disk.tweak_rule();
    after.zero_units = disk.zero_unit_rule();
    // The data check needs the first non-zero units of the ciphertext (read only); the MAC only the DEK.
    // The journal's record always carries it, because it binds an interrupted adoption to this disk's
    // ciphertext while vmcrypt's lock keeps QEMU out. The disk's record carries none where QEMU writes
    // the data afterwards (see Disk::data_changes_while_encrypted).
    const std::string data_check = compute_data_check(disk, dek);
    if (!disk.data_changes_while_encrypted())
        after.data_check = data_check;
    try {
        for (auto& source : seal)
            after.add_key_slot(seal_new_slot(*source, dek));
        after.key_slot_ids = after.slot_ids();
        after.seal(dek);

        // The journal's extra slot: the foreign passphrase, so that the same command finishes an
        // interrupted adoption. It is never written to the disk.
        EncryptionRecord before = after;
        before.data_check = data_check;
        before.key_slots = {passphrase_source->seal(dek)};
        before.key_slot_ids = {free_slot_id(after)};
        before.seal(dek);

        disk.prepare_adopt(dek, after.to_fields());
        commit_key_change(disk, dek, before, after);
    } catch (...) {
        // Until the journal exists no record refers to a KEK created for the new slots.
        std::error_code ec;
        if (!std::filesystem::exists(Journal::path_for(disk.files().front()->path()), ec))
            for (auto& source : seal)
                source->discard_sealed();
        throw;
    }
    report.added = describe_slots(after);
    report.slots = report.added;
    log_info(where + ": the foreign data key is now the DEK of vmcrypt's key slots; the foreign keys still open "
                     "the disk");
}

}  // namespace vmcrypt
