#include "core/engine/operation.hpp"

#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/data_check.hpp"
#include "core/engine/key_change.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/engine/space_check.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/io/locks.hpp"
#include "core/record/encryption_record.hpp"

#include <algorithm>
#include <cctype>
#include <set>

namespace vmcrypt {

namespace {

bool same_key_slots(const RecordFields& a, const RecordFields& b)
{
    try {
        EncryptionRecord first = EncryptionRecord::from_fields(a, "");
        EncryptionRecord second = EncryptionRecord::from_fields(b, "");
        if (first.key_slots.size() != second.key_slots.size() || first.slot_ids() != second.slot_ids() ||
            first.tweak != second.tweak)
            return false;
        for (std::size_t i = 0; i < first.key_slots.size(); ++i)
            if (first.key_slots[i].to_text() != second.key_slots[i].to_text())
                return false;
        return true;
    } catch (const Error&) {
        return false;
    }
}

bool has_state(const RecordFields& fields, RecordState state)
{
    try {
        return EncryptionRecord::from_fields(fields, "").state == state;
    } catch (const Error&) {
        return false;
    }
}

// Compares the record's dataCheck with the data before a decrypt writes anything. An image that QEMU
// writes by design (qcow2) is not checked, because a guest write changes the checked units.
void check_data_matches(Disk& disk, const EncryptionRecord& record, const SecureBytes& dek, DataCheckMode mode,
                        const std::string& where)
{
    if (record.data_check.empty() || disk.data_changes_while_encrypted())
        return;
    if (compute_data_check(disk, dek) == record.data_check)
        return;

    if (mode == DataCheckMode::skip) {
        log_warning(where + ": dataCheck does not match the disk's data; decrypting anyway, as "
                    "--skip-data-check requests");
        return;
    }
    throw InvalidInput(where + ": ddb.vmcrypt.dataCheck does not match the disk's data, so the encryption record "
                       "belongs to another disk (a copied descriptor?) or a program wrote to the disk while it was "
                       "encrypted; nothing was written. If this record is the disk's own, decrypt anyway with "
                       "--skip-data-check: the units written since come out as garbage, the rest as before");
}

bool verifies_with(const RecordFields& fields, const SecureBytes& dek)
{
    try {
        EncryptionRecord::from_fields(fields, "").verify_mac(dek, "");
        return true;
    } catch (const Error&) {
        return false;
    }
}

// The record's dataCheck value when it has the form of a whole one (44 base64 characters).
std::optional<std::string> well_formed_data_check(const RecordFields& fields)
{
    for (const auto& [name, value] : fields) {
        if (name != "dataCheck")
            continue;
        const bool base64 = value.size() == 44 && std::all_of(value.begin(), value.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=';
        });
        if (base64)
            return value;
    }
    return std::nullopt;
}

// Rejects a journal that does not belong to the disk's current record: an old copy put back, or a
// replaced descriptor. Resuming such a journal would rewrite finished windows a second time or drop
// the only wrapped copy of a DEK. `journal_record` is the in-progress record the journal carries.
void check_journal_belongs(Disk& disk, Operation operation, JournalPhase phase, const RecordFields& journal_record,
                           const SecureBytes& dek, const std::filesystem::path& journal_path)
{
    const std::optional<RecordFields> current = disk.record();
    bool belongs = current && *current == journal_record;
    const bool encrypting = operation == Operation::encrypt;
    // A decrypt of another product's encryption starts without a record of vmcrypt's own.
    const bool foreign_decrypt_start = !encrypting && !current && disk.foreign_encryption();
    if (!belongs && phase == JournalPhase::metadata)  // the start record may not be written yet
        belongs = encrypting ? !current
                             : foreign_decrypt_start || (current && has_state(*current, RecordState::encrypted) &&
                                                         same_key_slots(*current, journal_record));
    if (!belongs && phase == JournalPhase::finalize)  // the final record may be written already
        belongs = encrypting ? current && has_state(*current, RecordState::encrypted) &&
                                   same_key_slots(*current, journal_record)
                             : !current;

    // A crash in the middle of the pending descriptor write (start or final record) leaves a mixture of
    // the old and the new record, which fails its MAC under the DEK, and the journaled write replaces it.
    // Two look-alikes are still rejected. A whole record of another encryption has a well-formed
    // dataCheck that is neither the journal's nor the data's under the journal's DEK, whereas a mixture
    // keeps the old or the new value or cuts the line. And before a decrypt's first window, the data
    // must still be under the journal's DEK.
    if (!belongs && phase != JournalPhase::window && current && !verifies_with(*current, dek)) {
        const EncryptionRecord journal_view = EncryptionRecord::from_fields(journal_record, "");
        const std::string data_check = compute_data_check(disk, dek);
        const std::optional<std::string> current_check = well_formed_data_check(*current);
        const bool other_record =
            current_check && *current_check != journal_view.data_check && *current_check != data_check;
        const bool other_data = operation == Operation::decrypt && phase == JournalPhase::metadata &&
                                !journal_view.data_check.empty() && data_check != journal_view.data_check;
        belongs = !other_record && !other_data;
        if (belongs)
            log_info(journal_path.string() + ": the disk's encryption record does not verify, as a write torn by a "
                     "crash leaves it; the journaled write replaces it");
    }
    if (!belongs)
        throw InvalidInput(journal_path.string() + ": the journal does not match the disk's encryption record, so "
                           "it is an old copy or the descriptor was replaced; nothing was written. If the disk is "
                           "known to be complete, move the journal away; otherwise restore the disk from a backup");
}

}  // namespace

void lock_disk(Disk& disk)
{
    for (File* file : disk.files()) {
        if (auto lock_folder = find_vmware_lock(file->path()))
            throw DiskInUse(file->path().string() + ": VMware lock folder " + lock_folder->string() +
                            " exists, so a VMware product has the disk open; power off the VM (or remove a stale "
                            "lock folder) and retry");
    }
    for (File* file : disk.files())
        lock_exclusive(*file);
}

SecureBytes unlock_dek(const RecordFields& fields, KeySources& sources, const std::string& where)
{
    return unlock_key_slot(fields, source_list({&sources}), where).dek;
}

namespace {

OperationReport start_or_resume(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                                RewriteOptions options, const DiskOpener& opener);

}  // namespace

OperationReport run_operation(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                              RewriteOptions options, const DiskOpener& opener)
{
    return add_resume_hint(operation, disk_path, [&] {
        return start_or_resume(operation, disk_path, sources, std::move(options), opener);
    });
}

namespace {

OperationReport start_or_resume(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                                RewriteOptions options, const DiskOpener& opener)
{
    std::error_code ec;
    if (!std::filesystem::exists(disk_path, ec))
        throw InvalidInput(disk_path.string() + ": file not found; check the path of the disk");
    const std::filesystem::path path = std::filesystem::weakly_canonical(disk_path);
    const std::string where = disk_path.string();
    options.resume_command = resume_command(operation, disk_path);

    OperationReport report;
    report.disk = disk_path;
    report.operation = operation;

    // A key-slot change that a crash interrupted is finished first; its DEK may be the only key that
    // the given sources still open (their slot was the one replaced).
    std::optional<SecureBytes> finished_change_dek = finish_key_change(path, source_list({&sources}), opener, where);

    // An unfinished operation: resume it, or refuse another command on the disk.
    const std::filesystem::path journal_path = Journal::path_for(path);
    if (std::optional<JournalSummary> summary = Journal::peek(journal_path)) {
        Operation unfinished = summary->header.operation;
        if (unfinished != operation)
            reject_other_unfinished(path, disk_path, where, unfinished, journal_path);

        // The header is authenticated only once the DEK is known. Until then a damaged header shows up as
        // an unreadable record, so report it as a damaged journal, not as a damaged disk.
        SecureBytes dek;
        try {
            dek = unlock_dek(summary->header.record, sources, where);
        } catch (const NoMatchingKeySource&) {
            throw;  // no key was tried, so nothing points at the journal
        } catch (const Error& e) {
            if (e.code() == ExitCode::invalid_input)
                throw InvalidInput(journal_path.string() + ": the journal header is damaged (" + e.what() +
                                   "); keep the journal and the disk as they are and restore the disk from a backup");
            if (e.code() != ExitCode::key_error)
                throw;
            throw Error(e.code(), std::string(e.what()) + " (the key slots were read from the unauthenticated journal "
                                  "header " + journal_path.string() + "; if this key is right, the journal is damaged)");
        }
        Journal journal = Journal::open(journal_path, dek);
        JournalEntry newest = journal.newest();
        std::unique_ptr<Disk> disk = open_for_resume(path, where, newest, opener);
        check_journal_belongs(*disk, operation, newest.phase, summary->header.record, dek, journal_path);

        EncryptionRecord record = EncryptionRecord::from_fields(summary->header.record, where);
        MetadataWrite final_metadata = operation == Operation::encrypt
                                           ? prepare_encrypted_record(*disk, record, dek, options)
                                           : disk->record_update(std::nullopt);
        for (const KeySlot& slot : record.key_slots)
            report.key_slots.push_back(slot_summary(slot));

        RewriteEngine engine(*disk, dek, options);
        report.result = engine.resume(std::move(journal), final_metadata);
        return report;
    }

    std::unique_ptr<Disk> disk = opener(path, Access::read_write);
    lock_disk(*disk);
    if (operation == Operation::encrypt)
        check_no_unfinished_merge(*disk, path, where, disk->record() ? DiskContent::encrypted : DiskContent::plaintext);
    // Decrypt of another product's encryption that vmcrypt can unlock (QEMU LUKS with its passphrase).
    std::optional<SecureBytes> foreign_dek;
    KeySource* foreign_source = nullptr;
    if (operation == Operation::decrypt && !disk->record() && disk->foreign_encryption()) {
        for (auto& source : sources)
            if (!foreign_source && source->passphrase())
                foreign_source = source.get();
        foreign_dek = disk->unlock_foreign(foreign_source ? foreign_source->passphrase() : nullptr);
    }
    check_relations(*disk, where, foreign_dek.has_value());

    std::optional<RecordFields> fields = disk->record();
    if (fields) {
        EncryptionRecord current = EncryptionRecord::from_fields(*fields, where);
        if (current.state != RecordState::encrypted)
            throw InvalidInput(missing_journal_message(where, to_string(current.state), journal_path));
    }

    RewritePlan plan;
    plan.operation = operation;
    SecureBytes dek;
    if (operation == Operation::encrypt) {
        if (fields)
            throw WrongDiskState(where + ": the disk is already encrypted by vmcrypt; nothing to do "
                                 "(use `vmcrypt inspect` to see its key slots)");
        if (sources.empty())
            throw UsageError("encrypt: no key source given");
        for (auto& source : sources)
            source->check_ready();

        dek = new_dek();
        EncryptionRecord record;
        record.tweak = disk->tweak_rule();
        record.zero_units = disk->zero_unit_rule();
        try {
            for (auto& source : sources)
                record.key_slots.push_back(seal_new_slot(*source, dek));
            record.state = RecordState::encrypting;
            record.seal(dek);
            check_rewrite_space(*disk, operation,
                                {window_size_for(options, *disk), metadata_bound(*disk, record.to_fields()),
                                 disk->prepare_encrypt_bytes()},
                                where);
            disk->prepare_encrypt(dek, record.to_fields());
            plan.start_metadata = disk->record_update(record.to_fields());
            plan.journal_record = record.to_fields();

            plan.final_metadata = prepare_encrypted_record(*disk, record, dek, options);
        } catch (...) {
            for (auto& source : sources)
                source->discard_sealed();
            throw;
        }
        for (const KeySlot& slot : record.key_slots)
            report.key_slots.push_back(slot_summary(slot));
    } else if (foreign_dek) {
        // The foreign key becomes the DEK, sealed into a passphrase slot with the same passphrase, so a
        // resumed run unlocks it like any vmcrypt record.
        dek = *foreign_dek;
        EncryptionRecord record;
        record.cipher = disk->foreign_cipher();
        record.dek_bits = static_cast<unsigned>(dek.size() * 8);
        record.tweak = disk->tweak_rule();
        record.zero_units = disk->zero_unit_rule();
        record.key_slots.push_back(foreign_source->seal(dek));
        record.state = RecordState::decrypting;
        record.seal(dek);
        plan.start_metadata = disk->record_update(record.to_fields());
        plan.journal_record = record.to_fields();
        plan.final_metadata = disk->record_update(std::nullopt);
        for (const KeySlot& slot : record.key_slots)
            report.key_slots.push_back(slot_summary(slot));
    } else {
        if (!fields)
            throw WrongDiskState(where + ": the disk is not encrypted by vmcrypt (no ddb.vmcrypt record); "
                                 "nothing to decrypt");
        EncryptionRecord record = EncryptionRecord::from_fields(*fields, where);
        if (finished_change_dek) {
            dek = *finished_change_dek;
            record.verify_mac(dek, where);
        } else {
            dek = unlock_dek(*fields, sources, where);
        }

        check_data_matches(*disk, record, dek, options.data_check, where);
        if (record.tweak != disk->tweak_rule())
            throw InvalidInput(where + ": ddb.vmcrypt.tweak is \"" + record.tweak + "\" but a " + disk->format() +
                               " disk uses \"" + disk->tweak_rule() + "\"; the record does not belong to this disk");
        if (record.zero_units != disk->zero_unit_rule())
            throw InvalidInput(where + ": encryption record field zeroUnits is \"" + record.zero_units + "\" but a " +
                               disk->format() + " disk uses \"" + disk->zero_unit_rule() +
                               "\"; the record does not belong to this disk");
        record.state = RecordState::decrypting;
        record.seal(dek);
        plan.start_metadata = disk->record_update(record.to_fields());
        plan.journal_record = record.to_fields();
        plan.final_metadata = disk->record_update(std::nullopt);
        for (const KeySlot& slot : record.key_slots)
            report.key_slots.push_back(slot_summary(slot));
    }

    if (operation == Operation::decrypt)
        check_rewrite_space(*disk, operation,
                            {window_size_for(options, *disk),
                             std::max(plan.start_metadata.bytes.size(), plan.final_metadata.bytes.size()), 0},
                            where);

    RewriteEngine engine(*disk, dek, options);
    try {
        report.result = engine.start(plan);
    } catch (...) {
        // Until the journal exists the disk does not refer to a newly created KEK, so remove it.
        std::error_code exists_error;
        if (operation == Operation::encrypt && !std::filesystem::exists(journal_path, exists_error))
            for (auto& source : sources)
                source->discard_sealed();
        throw;
    }
    return report;
}

}  // namespace

}  // namespace vmcrypt
