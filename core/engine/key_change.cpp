#include "core/engine/key_change.hpp"

#include "core/engine/data_check.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/engine/journal.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/engine/rewrite_engine.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/log.hpp"

#include <algorithm>

namespace vmcrypt {

namespace {

bool same_write(const MetadataWrite& a, const MetadataWrite& b)
{
    return a.file_index == b.file_index && a.offset == b.offset && a.bytes == b.bytes && a.truncate_to == b.truncate_to;
}

// True when every slot of `record` (id and content) is also a slot of `journal_record`.
bool slots_within(const EncryptionRecord& record, const EncryptionRecord& journal_record)
{
    std::vector<std::uint32_t> ids = record.slot_ids();
    for (std::size_t i = 0; i < ids.size(); ++i) {
        std::optional<std::size_t> position = journal_record.slot_position(ids[i]);
        if (!position || journal_record.key_slots[*position].to_text() != record.key_slots[i].to_text())
            return false;
    }
    return true;
}

// Rejects a key-change journal that does not belong to the disk as it is: an old copy put back next to
// a disk whose record changed since. Accepted are the record before the change (its slots are all in
// the journal's record), the record after it (the journaled write), and a record that does not verify
// with the DEK, which is what a torn descriptor write leaves. A torn write never removes the whole
// record, because the descriptor text before the record is the same in both versions.
void check_key_change_belongs(Disk& disk, const SecureBytes& dek, const EncryptionRecord& journal_record,
                              const MetadataWrite& journaled, const std::filesystem::path& journal_path,
                              const std::string& where)
{
    const std::string mismatch = journal_path.string() + ": the journal of an unfinished key-slot change does not "
                                                          "match the disk's encryption record (";
    const std::string advice = "), so it is an old copy or the descriptor was replaced; nothing was written. Move "
                               "the journal away if the disk is known to be complete";

    // An interrupted adoption of foreign encryption leaves no record, or a torn one, until its write is
    // done. Its journal record carries the data check, which binds it to this disk's ciphertext.
    std::optional<RecordFields> current = disk.record();
    const bool adopting = !current && disk.foreign_adoptable() && !journal_record.data_check.empty();
    if (!current && !adopting)
        throw InvalidInput(mismatch + "the disk has no record" + advice);

    // The data must still be under this DEK: replaying over a disk whose DEK changed since (a deep rekey
    // after the journal was copied) would lose every key to the data. Data that QEMU rewrites by design
    // is checked only during an adoption, when vmcrypt's lock has kept QEMU out since the check was made.
    const bool check_data = adopting || !disk.data_changes_while_encrypted();
    if (check_data && !journal_record.data_check.empty() && compute_data_check(disk, dek) != journal_record.data_check)
        throw InvalidInput(mismatch + "the data is no longer under the journal's DEK" + advice);
    if (adopting)
        return;

    EncryptionRecord record;
    try {
        record = EncryptionRecord::from_fields(*current, where);
        record.verify_mac(dek, where);
    } catch (const Error&) {
        log_info(where + ": the encryption record is incomplete or does not verify, as a torn write leaves it");
        return;
    }
    if (same_write(disk.record_update(*current), journaled))
        return;
    if (record.state == RecordState::encrypted && slots_within(record, journal_record))
        return;
    throw InvalidInput(mismatch + "it has other key slots" + advice);
}

}  // namespace

void commit_key_change(Disk& disk, const SecureBytes& dek, const EncryptionRecord& before,
                       const EncryptionRecord& after)
{
    // The journal's record carries every slot of both records, so a key of either unlocks it.
    EncryptionRecord journal_record = before;
    journal_record.key_slot_ids = before.slot_ids();
    std::vector<std::uint32_t> after_ids = after.slot_ids();
    for (std::size_t i = 0; i < after_ids.size(); ++i) {
        if (journal_record.slot_position(after_ids[i]))
            continue;
        journal_record.key_slots.push_back(after.key_slots[i]);
        journal_record.key_slot_ids.push_back(after_ids[i]);
    }
    journal_record.seal(dek);

    MetadataWrite update = disk.record_update(after.to_fields());

    JournalHeader header;
    header.operation = Operation::key_change;
    header.window_size = 512;  // no data windows; the journal format needs a valid size
    header.total_bytes = 0;
    header.record = journal_record.to_fields();

    JournalEntry entry;
    entry.phase = JournalPhase::finalize;
    entry.metadata = update;

    fault_point("before-journal-create");
    Journal journal =
        Journal::create(Journal::path_for(disk.files().front()->path()), header, entry, update.bytes.size(), dek);
    // COMMIT POINT: the new record is durable in the journal. Before it nothing changed. After it the
    // next vmcrypt command with a key of the old or the new slots finishes the change.
    fault_point("journal-created");

    disk.apply(update);
    fault_point("final-metadata-written");
    journal.remove();
}

std::optional<SecureBytes> finish_key_change(const std::filesystem::path& metadata_file,
                                             const std::vector<KeySource*>& sources, const DiskOpener& opener,
                                             const std::string& where)
{
    const std::filesystem::path journal_path = Journal::path_for(metadata_file);
    std::optional<JournalSummary> summary = Journal::peek(journal_path);
    if (!summary || summary->header.operation != Operation::key_change)
        return std::nullopt;

    // The journal header is authenticated only once the DEK is known. Until then a damaged header shows
    // up as an unreadable record.
    SecureBytes dek;
    try {
        dek = unlock_key_slot(summary->header.record, sources, where).dek;
    } catch (const Error& e) {
        if (e.code() == ExitCode::invalid_input)
            throw InvalidInput(journal_path.string() + ": the journal header of an unfinished key-slot change is "
                               "damaged (" + e.what() + "); keep the journal and restore the descriptor from a backup");
        if (e.code() != ExitCode::key_error)
            throw;
        throw Error(e.code(), std::string(e.what()) + " (an unfinished key-slot change is recorded in " +
                                  journal_path.string() + "; a key of the old or of the new key slots finishes it)");
    }
    EncryptionRecord journal_record = EncryptionRecord::from_fields(summary->header.record, journal_path.string());

    Journal journal = Journal::open(journal_path, dek);
    JournalEntry entry = journal.newest();
    if (entry.phase != JournalPhase::finalize || !entry.metadata)
        throw InvalidInput(journal_path.string() + ": the journal of a key-slot change must hold one record write, "
                           "but its newest entry is another kind; keep it and restore the descriptor from a backup");
    if (auto lock_folder = find_vmware_lock(metadata_file))
        throw DiskInUse(where + ": VMware lock folder " + lock_folder->string() +
                        " exists; power off the VM (or remove a stale lock folder) and retry");

    // A crash in the middle of the in-place descriptor write can leave it unparseable, and the journal
    // contains its complete bytes.
    std::unique_ptr<Disk> disk;
    try {
        disk = opener(metadata_file, Access::read_write);
    } catch (const Error& e) {
        if (e.code() != ExitCode::invalid_input)
            throw;
        log_info(where + ": the descriptor does not parse (" + e.what() + "); writing the journaled one");
        replay_metadata(metadata_file, *entry.metadata);
        disk = opener(metadata_file, Access::read_write);
    }
    lock_disk(*disk);
    check_key_change_belongs(*disk, dek, journal_record, *entry.metadata, journal_path, where);

    disk->apply(*entry.metadata);
    journal.remove();
    log_warning(where + ": finished an interrupted key-slot change recorded in " + journal_path.string());
    return dek;
}

}  // namespace vmcrypt
