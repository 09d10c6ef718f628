// Deep rekey: a new DEK, every allocated non-zero unit rewritten from the old DEK to the new one.

#include "core/engine/data_check.hpp"
#include "core/engine/journal.hpp"
#include "core/engine/key_change.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/engine/rekey.hpp"
#include "core/engine/resume_hint.hpp"
#include "core/engine/space_check.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/log.hpp"

#include <algorithm>

namespace vmcrypt {

namespace {

bool verifies(const EncryptionRecord& record, const SecureBytes& dek)
{
    try {
        record.verify_mac(dek, "");
        return true;
    } catch (const Error&) {
        return false;
    }
}

// Rejects a rekey journal that does not belong to the disk's record (an old copy put back, or a
// replaced descriptor). `journal_record` is the rekeying record the journal carries; `dek` is the new
// DEK and `previous` the old one.
void check_rekey_journal_belongs(JournalPhase phase, const RecordFields& journal_record,
                                 const std::optional<RecordFields>& current, const SecureBytes& dek,
                                 const SecureBytes& previous, const std::filesystem::path& journal_path)
{
    if (current && *current == journal_record)
        return;

    // Before the first window the record may still be the old one, and after the last one already the
    // final one. In both phases the journal contains the pending write, so a record torn by a crash
    // during that write (it verifies with neither DEK) is accepted too and overwritten.
    if (phase != JournalPhase::window && current) {
        std::optional<EncryptionRecord> record;
        try {
            record = EncryptionRecord::from_fields(*current, "");
        } catch (const Error&) {
        }
        if (!record)
            return;
        const bool old_record = verifies(*record, previous);
        const bool new_record = verifies(*record, dek);
        if (!old_record && !new_record)
            return;
        if (phase == JournalPhase::metadata && old_record && record->state == RecordState::encrypted)
            return;
        if (phase == JournalPhase::finalize && new_record && record->state == RecordState::encrypted &&
            record->slot_ids() == EncryptionRecord::from_fields(journal_record, "").slot_ids())
            return;
    }
    throw InvalidInput(journal_path.string() + ": the journal does not match the disk's encryption record, so it is "
                       "an old copy or the descriptor was replaced; nothing was written. If the disk is known to be "
                       "complete, move the journal away; otherwise restore the disk from a backup");
}

// The slot list a report shows.
std::vector<std::string> slot_summaries(const EncryptionRecord& record)
{
    std::vector<std::string> summaries;
    for (const KeySlot& slot : record.key_slots)
        summaries.push_back(slot_summary(slot));
    return summaries;
}

KeySource* find_opener(const KeySlot& slot, const SecureBytes& dek, const std::vector<KeySource*>& sources);

// Warns about each --new-* key that opens none of the journal's key slots: a resumed deep rekey seals
// the data under the slots that the interrupted run wrote, whatever new keys the resume is given.
void warn_unused_new_keys(const EncryptionRecord& record, const SecureBytes& dek, const KeySource* opener,
                          const std::vector<KeySource*>& new_sources, const std::string& where)
{
    for (KeySource* source : new_sources) {
        if (source == opener)
            continue;
        const bool opens_a_slot = std::any_of(record.key_slots.begin(), record.key_slots.end(),
                                              [&](const KeySlot& slot) { return find_opener(slot, dek, {source}); });
        if (!opens_a_slot)
            log_warning(where + ": " + source->description() + " is not used: the interrupted deep rekey finishes "
                        "under the key slots it started with; run `vmcrypt rekey` afterwards to change them");
    }
}

OperationReport resume_deep_rekey(const std::filesystem::path& path, const std::string& where,
                                  const std::filesystem::path& journal_path, const JournalSummary& summary,
                                  const std::vector<KeySource*>& sources, const std::vector<KeySource*>& new_sources,
                                  RewriteOptions& options, const DiskOpener& opener)
{
    // The header is authenticated only once the DEK is known. Until then a damaged header shows up as an
    // unreadable record, so report it as a damaged journal, not as a damaged disk.
    SecureBytes dek;
    const KeySource* opener_source = nullptr;
    try {
        UnlockedKey unlocked = unlock_key_slot(summary.header.record, sources, where);
        dek = std::move(unlocked.dek);
        opener_source = unlocked.source;
    } catch (const Error& e) {
        if (e.code() == ExitCode::invalid_input)
            throw InvalidInput(journal_path.string() + ": the journal header is damaged (" + e.what() +
                               "); keep the journal and the disk as they are and restore the disk from a backup");
        if (e.code() != ExitCode::key_error)
            throw;
        throw Error(e.code(), std::string(e.what()) + " (a deep rekey is unfinished: it needs a key of the new key "
                              "slots, so re-run the same command with the same --new-* options)");
    }
    Journal journal = Journal::open(journal_path, dek);
    JournalEntry newest = journal.newest();
    std::unique_ptr<Disk> disk = open_for_resume(path, where, newest, opener);

    EncryptionRecord record = EncryptionRecord::from_fields(summary.header.record, journal_path.string());
    SecureBytes previous = record.unwrap_previous_dek(dek, journal_path.string());
    warn_unused_new_keys(record, dek, opener_source, new_sources, where);
    check_rekey_journal_belongs(newest.phase, summary.header.record, disk->record(), dek, previous, journal_path);

    EncryptionRecord final_record = record;
    final_record.previous_dek.clear();
    MetadataWrite final_metadata = prepare_encrypted_record(*disk, final_record, dek, options);

    OperationReport report;
    report.disk = where;
    report.operation = Operation::rekey;
    report.key_slots = slot_summaries(record);
    RewriteEngine engine(*disk, dek, options, &previous);
    report.result = engine.resume(std::move(journal), final_metadata);
    return report;
}

// Finds the source among `sources` that opens `slot` to `dek`.
KeySource* find_opener(const KeySlot& slot, const SecureBytes& dek, const std::vector<KeySource*>& sources)
{
    for (KeySource* source : sources) {
        if (source->slot_type() != slot.type)
            continue;
        try {
            if (source->unseal(slot) == dek)
                return source;
        } catch (const Error&) {
            // Another key of the same type: try the next source.
        }
    }
    return nullptr;
}

OperationReport start_deep_rekey(const std::filesystem::path& path, const std::string& where, KeySources& unlock,
                                 KeySources& seal, RewriteOptions& options, const DiskOpener& opener)
{
    std::unique_ptr<Disk> disk = opener(path, Access::read_write);
    lock_disk(*disk);
    check_relations(*disk, where);

    std::optional<RecordFields> fields = disk->record();
    if (!fields)
        throw WrongDiskState(where + ": the disk is not encrypted by vmcrypt (no ddb.vmcrypt record); nothing to "
                             "rekey; encrypt it with: vmcrypt encrypt " + where);
    check_no_unfinished_merge(*disk, path, where, DiskContent::encrypted);
    EncryptionRecord old_record = EncryptionRecord::from_fields(*fields, where);
    if (old_record.state != RecordState::encrypted)
        throw InvalidInput(missing_journal_message(where, to_string(old_record.state), Journal::path_for(path)));

    // Validate everything, unlock, and seal the new DEK before the first write.
    const std::vector<KeySource*> unlock_sources = source_list({&unlock});
    UnlockedKey old_key = unlock_key_slot(*fields, unlock_sources, where);
    if (!old_record.data_check.empty() && !disk->data_changes_while_encrypted() &&
        compute_data_check(*disk, old_key.dek) != old_record.data_check)
        throw InvalidInput(where + ": ddb.vmcrypt.dataCheck does not match the disk's data: the encryption record "
                           "belongs to another disk (a copied descriptor?) or the data was changed after "
                           "encryption; nothing was written");
    if (old_record.tweak != disk->tweak_rule())
        throw InvalidInput(where + ": ddb.vmcrypt.tweak is \"" + old_record.tweak + "\" but a " + disk->format() +
                           " disk uses \"" + disk->tweak_rule() + "\"; the record does not belong to this disk");
    if (old_record.zero_units != disk->zero_unit_rule())
        throw InvalidInput(where + ": encryption record field zeroUnits is \"" + old_record.zero_units + "\" but a " +
                           disk->format() + " disk uses \"" + disk->zero_unit_rule() +
                           "\"; the record does not belong to this disk");
    for (auto& source : seal)
        source->check_ready();

    const SecureBytes dek = new_dek();
    EncryptionRecord record;
    record.tweak = old_record.tweak;
    record.zero_units = old_record.zero_units;
    record.state = RecordState::rekeying;
    std::vector<std::unique_ptr<KeySource>> sealers;
    RewritePlan plan;
    plan.operation = Operation::rekey;
    auto discard_new_keys = [&] {
        for (auto& source : seal)
            source->discard_sealed();
        for (auto& sealer : sealers)
            sealer->discard_sealed();
    };
    try {
        // Every old slot wraps the old DEK, which is worthless afterwards: each is resealed under its own
        // KEK, except the slot that the new keys replace.
        const std::vector<std::uint32_t> ids = old_record.slot_ids();
        for (std::size_t position = 0; position < old_record.key_slots.size(); ++position) {
            if (position == old_key.slot_position && !seal.empty())
                continue;
            const KeySlot& slot = old_record.key_slots[position];
            const std::string name = "key slot " + std::to_string(ids[position]) + " (" + slot_summary(slot) + ")";
            KeySource* source = position == old_key.slot_position ? old_key.source
                                                                   : find_opener(slot, old_key.dek, unlock_sources);
            if (!source)
                throw KeyUnavailable(where + ": " + name + " must be resealed under the new DEK, but no given key "
                                     "opens it; give its key too (--key-file, --passphrase-file, --keystore), or "
                                     "remove the slot first with: " +
                                     command_with_unlock_keys({"vmcrypt", "keys", "remove", "--slot",
                                                               std::to_string(ids[position])},
                                                              where));
            std::unique_ptr<KeySource> sealer = source->same_kek_sealer(slot);
            if (!sealer)
                throw UsageError(where + ": " + name + " cannot be resealed by " + source->description() +
                                 "; give the new key with --new-key-file, --new-passphrase-file or --new-keystore");
            record.key_slots.push_back(seal_new_slot(*sealer, dek));
            record.key_slot_ids.push_back(ids[position]);
            sealers.push_back(std::move(sealer));
        }
        for (auto& source : seal)
            record.add_key_slot(seal_new_slot(*source, dek));

        record.wrap_previous_dek(old_key.dek, dek);
        record.seal(dek);
        // The format's own copies of the DEK (a qcow2 LUKS area): written unreferenced now, named by the
        // start metadata and switched to by the final metadata.
        check_rewrite_space(*disk, Operation::rekey,
                            {window_size_for(options, *disk), metadata_bound(*disk, record.to_fields()),
                             disk->prepare_rekey_bytes()},
                            where);
        disk->prepare_rekey(dek, record.to_fields());
        plan.start_metadata = disk->record_update(record.to_fields());
        plan.journal_record = record.to_fields();

        EncryptionRecord final_record = record;
        final_record.previous_dek.clear();
        plan.final_metadata = prepare_encrypted_record(*disk, final_record, dek, options);
    } catch (...) {
        discard_new_keys();
        throw;
    }

    OperationReport report;
    report.disk = where;
    report.operation = Operation::rekey;
    report.key_slots = slot_summaries(record);
    RewriteEngine engine(*disk, dek, options, &old_key.dek);
    try {
        report.result = engine.start(plan);
    } catch (...) {
        // Until the journal exists the disk does not refer to a newly created KEK.
        std::error_code ec;
        if (!std::filesystem::exists(Journal::path_for(path), ec))
            discard_new_keys();
        throw;
    }
    return report;
}

}  // namespace

OperationReport run_deep_rekey(const std::filesystem::path& disk_path, KeySources& unlock, KeySources& seal,
                               RewriteOptions options, const DiskOpener& opener)
{
    return add_resume_hint(Operation::rekey, disk_path, [&] {
        std::error_code ec;
        if (!std::filesystem::exists(disk_path, ec))
            throw InvalidInput(disk_path.string() + ": file not found; check the path of the disk");
        const std::filesystem::path path = std::filesystem::weakly_canonical(disk_path);
        const std::string where = disk_path.string();
        options.resume_command = resume_command(Operation::rekey, disk_path);

        const std::vector<KeySource*> all_sources = source_list({&unlock, &seal});
        finish_key_change(path, all_sources, opener, where);

        const std::filesystem::path journal_path = Journal::path_for(path);
        if (std::optional<JournalSummary> summary = Journal::peek(journal_path)) {
            if (summary->header.operation != Operation::rekey)
                reject_other_unfinished(path, disk_path, where, summary->header.operation, journal_path);
            return resume_deep_rekey(path, where, journal_path, *summary, all_sources, source_list({&seal}), options,
                                     opener);
        }
        return start_deep_rekey(path, where, unlock, seal, options, opener);
    });
}

}  // namespace vmcrypt
