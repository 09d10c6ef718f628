#include "core/engine/operation.hpp"

#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/data_check.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/record/encryption_record.hpp"

#include <algorithm>
#include <set>

namespace vmcrypt {

namespace {

std::string join(const std::vector<std::string>& items, const std::string& separator)
{
    std::string text;
    for (const std::string& item : items)
        text += (text.empty() ? "" : separator) + item;
    return text;
}

std::string slot_summary(const KeySlot& slot)
{
    auto kek = slot.params.find("kek");
    if (kek != slot.params.end())
        return slot.type + " kek=" + kek->second;
    auto provider = slot.params.find("provider");
    auto key = slot.params.find("key");
    if (provider != slot.params.end() && key != slot.params.end())
        return slot.type + " provider=" + provider->second + " key=" + key->second;
    return slot.type;
}

SecureBytes new_dek()
{
    // XTS forbids equal key halves; a random 64-byte key has them with probability 2^-256, but check.
    for (;;) {
        SecureBytes dek = random_bytes(xts_key_size);
        if (!std::equal(dek.begin(), dek.begin() + 32, dek.begin() + 32))
            return dek;
    }
}

// The command that merges the chain of `disk`, whose snapshot `snapshot` it names (the disk itself when
// it is a snapshot). NOTE: consolidate-snapshots merges VMDK chains only; other formats get qemu-img's.
std::string merge_command(const Disk& disk, const std::string& where, const std::string& snapshot, bool is_snapshot)
{
    if (disk.format() == "vmdk")
        return "vmcrypt consolidate-snapshots " + snapshot;
    if (is_snapshot)
        return "qemu-img convert -O " + disk.format() + " " + where + " standalone." + disk.format();
    return "qemu-img commit -b " + where + " NEWEST." + disk.format() + " (the newest image of the chain, " +
           snapshot + " or one of its snapshots)";
}

// Checks that the disk may be rewritten at all: no foreign encryption, no snapshots.
void check_relations(Disk& disk, const std::string& where)
{
    if (auto foreign = disk.foreign_encryption())
        throw WrongDiskState(where + ": the disk is encrypted by " + *foreign +
                             "; vmcrypt does not touch it (decrypt it with the product that encrypted it)");

    DiskRelations relations = disk.relations();
    if (!relations.parents.empty())
        throw WrongDiskState(where + ": the disk is a snapshot of " + relations.parents.front() +
                             "; merge the chain first with: " + merge_command(disk, where, where, true));
    if (!relations.children.empty())
        throw WrongDiskState(where + ": the disk has snapshots (" + join(relations.children, ", ") +
                             " names it as parent); merge them first with: " +
                             merge_command(disk, where, relations.children.front(), false));
}

// Returns the final metadata of an encrypt, sized with a placeholder check value so that an embedded
// descriptor without room is rejected before the first write. Sets the options to compute the real
// check value once all data is ciphertext.
MetadataWrite prepare_encrypted_record(Disk& disk, EncryptionRecord record, const SecureBytes& dek,
                                       RewriteOptions& options)
{
    record.state = RecordState::encrypted;
    record.data_check = std::string(44, 'A');
    record.seal(dek);
    MetadataWrite placeholder = disk.record_update(record.to_fields());

    options.make_final_metadata = [&disk, record, &dek]() mutable {
        record.data_check = compute_data_check(disk, dek);
        record.seal(dek);
        return disk.record_update(record.to_fields());
    };
    return placeholder;
}

bool same_key_slots(const RecordFields& a, const RecordFields& b)
{
    try {
        EncryptionRecord first = EncryptionRecord::from_fields(a, "");
        EncryptionRecord second = EncryptionRecord::from_fields(b, "");
        if (first.key_slots.size() != second.key_slots.size() || first.tweak != second.tweak)
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

// Rejects a journal that does not belong to the disk's current record: an old copy put back, or a
// replaced descriptor. Resuming such a journal would rewrite finished windows a second time or drop
// the only wrapped copy of a DEK. `journal_record` is the in-progress record the journal carries.
void check_journal_belongs(Operation operation, JournalPhase phase, const RecordFields& journal_record,
                           const std::optional<RecordFields>& current, const std::filesystem::path& journal_path)
{
    bool belongs = current && *current == journal_record;
    const bool encrypting = operation == Operation::encrypt;
    if (!belongs && phase == JournalPhase::metadata)  // the start record may not be written yet
        belongs = encrypting ? !current
                             : current && has_state(*current, RecordState::encrypted) &&
                                   same_key_slots(*current, journal_record);
    if (!belongs && phase == JournalPhase::finalize)  // the final record may be written already
        belongs = encrypting ? current && has_state(*current, RecordState::encrypted) &&
                                   same_key_slots(*current, journal_record)
                             : !current;
    if (!belongs)
        throw InvalidInput(journal_path.string() + ": the journal does not match the disk's encryption record, so "
                           "it is an old copy or the descriptor was replaced; nothing was written. If the disk is "
                           "known to be complete, move the journal away; otherwise restore the disk from a backup");
}

std::string resume_command(Operation operation, const std::filesystem::path& path)
{
    return "vmcrypt " + to_string(operation) + " " + path.string();
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
    EncryptionRecord record = EncryptionRecord::from_fields(fields, where);

    std::set<std::string> slot_types;
    for (const KeySlot& slot : record.key_slots)
        slot_types.insert(slot.type);

    std::optional<Error> first_failure;
    for (auto& source : sources) {
        for (const KeySlot& slot : record.key_slots) {
            if (slot.type != source->slot_type())
                continue;
            try {
                SecureBytes dek = source->unseal(slot);
                if (dek.size() != xts_key_size)
                    throw InvalidInput(where + ": the unwrapped DEK is " + std::to_string(dek.size()) +
                                       " bytes, expected 64");
                record.verify_mac(dek, where);
                return dek;
            } catch (const WrongKey& e) {
                if (!first_failure)
                    first_failure = e;
            } catch (const KeyUnavailable& e) {
                if (!first_failure)
                    first_failure = e;
            }
        }
    }
    if (first_failure)
        throw *first_failure;

    std::vector<std::string> given;
    for (auto& source : sources)
        given.push_back(source->slot_type());
    throw KeyUnavailable(where + ": no given key source matches the disk's key slots (disk has: " +
                         join({slot_types.begin(), slot_types.end()}, ", ") + "; given: " +
                         (given.empty() ? std::string("none") : join(given, ", ")) +
                         "); pass --key-file, --passphrase-file, --keystore or --kms-config accordingly");
}

namespace {

OperationReport start_or_resume(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                                RewriteOptions options, const DiskOpener& opener);

}  // namespace

OperationReport run_operation(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                              RewriteOptions options, const DiskOpener& opener)
{
    std::error_code ec;
    const std::filesystem::path journal_path =
        std::filesystem::exists(disk_path, ec) ? Journal::path_for(std::filesystem::weakly_canonical(disk_path))
                                               : std::filesystem::path();
    const bool had_journal = !journal_path.empty() && std::filesystem::exists(journal_path, ec);
    try {
        return start_or_resume(operation, disk_path, sources, std::move(options), opener);
    } catch (const Interrupted&) {
        throw;
    } catch (const Error& e) {
        // "Recovery needed": the journal exists, so the disk is mid-operation and consistent. Say how to
        // finish; failures before the journal existed changed nothing and keep their message.
        if (journal_path.empty() || !std::filesystem::exists(journal_path, ec))
            throw;
        if (had_journal && e.code() != ExitCode::io_error)
            throw;
        throw Error(e.code(), std::string(e.what()) + "; the " + to_string(operation) +
                                  " is unfinished but the disk is consistent: fix the cause and run `" +
                                  resume_command(operation, disk_path) + "` to resume");
    }
}

namespace {

OperationReport start_or_resume(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                                RewriteOptions options, const DiskOpener& opener)
{
    std::error_code ec;
    if (!std::filesystem::exists(disk_path, ec))
        throw InvalidInput(disk_path.string() + ": no such file; check the disk path");
    const std::filesystem::path path = std::filesystem::weakly_canonical(disk_path);
    const std::string where = disk_path.string();
    options.resume_command = resume_command(operation, disk_path);

    OperationReport report;
    report.disk = disk_path;
    report.operation = operation;

    // An unfinished operation: resume it, or refuse another command on the disk.
    const std::filesystem::path journal_path = Journal::path_for(path);
    if (std::optional<JournalSummary> summary = Journal::peek(journal_path)) {
        Operation unfinished = summary->header.operation;
        if (unfinished != operation)
            throw Interrupted(where + ": an unfinished " + to_string(unfinished) + " is recorded in " +
                              journal_path.string() + "; finish it first with: " + resume_command(unfinished, disk_path));

        // The header is authenticated only once the DEK is known. Until then a damaged header shows up as
        // an unreadable record, so report it as a damaged journal, not as a damaged disk.
        SecureBytes dek;
        try {
            dek = unlock_dek(summary->header.record, sources, where);
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
        if (auto lock_folder = find_vmware_lock(path))
            throw DiskInUse(where + ": VMware lock folder " + lock_folder->string() +
                            " exists; power off the VM (or remove a stale lock folder) and retry");

        // Nothing is written before the checks below unless the descriptor cannot be parsed. A crash in the
        // middle of an in-place metadata write can leave it so, and the journal contains its complete bytes.
        std::unique_ptr<Disk> disk;
        try {
            disk = opener(path, Access::read_write);
        } catch (const Error& e) {
            if (e.code() != ExitCode::invalid_input || newest.phase == JournalPhase::window)
                throw;
            replay_metadata(path, *newest.metadata);
            disk = opener(path, Access::read_write);
        }
        lock_disk(*disk);
        check_journal_belongs(operation, newest.phase, summary->header.record, disk->record(), journal_path);

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
    check_relations(*disk, where);

    std::optional<RecordFields> fields = disk->record();
    if (fields) {
        EncryptionRecord current = EncryptionRecord::from_fields(*fields, where);
        if (current.state != RecordState::encrypted)
            throw InvalidInput(where + ": the encryption record says \"" + to_string(current.state) +
                               "\" but the journal " + journal_path.string() +
                               " is missing, so the interrupted operation cannot be finished safely; restore the "
                               "disk from a backup (an older copy of the journal would rewrite finished windows again)");
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
                record.key_slots.push_back(source->seal(dek));
            record.state = RecordState::encrypting;
            record.seal(dek);
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
    } else {
        if (!fields)
            throw WrongDiskState(where + ": the disk is not encrypted by vmcrypt (no ddb.vmcrypt record); "
                                 "nothing to decrypt");
        dek = unlock_dek(*fields, sources, where);

        EncryptionRecord record = EncryptionRecord::from_fields(*fields, where);
        if (!record.data_check.empty() && compute_data_check(*disk, dek) != record.data_check)
            throw InvalidInput(where + ": ddb.vmcrypt.dataCheck does not match the disk's data: the encryption record "
                               "belongs to another disk (a copied descriptor?) or the data was changed after "
                               "encryption; nothing was written");
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
