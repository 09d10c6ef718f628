#include "core/engine/operation_steps.hpp"

#include "core/crypto/random.hpp"
#include "core/crypto/unit_cipher.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/data_check.hpp"
#include "core/engine/operation.hpp"
#include "core/error.hpp"
#include "core/io/free_space.hpp"
#include "core/io/locks.hpp"
#include "core/text/shell_words.hpp"

#include <algorithm>
#include <set>

namespace vmcrypt {

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

namespace {

// The command that merges the chain of `disk`, whose snapshot `snapshot` it names (the disk itself when
// it is a snapshot). consolidate-snapshots merges VMDK and qcow2 chains; other formats get qemu-img's.
std::string merge_command(const Disk& disk, const std::string& where, const std::string& snapshot, bool is_snapshot)
{
    if (disk.format() == "vmdk" || disk.format() == "qcow2")
        return shell_command({"vmcrypt", "consolidate-snapshots", snapshot});
    if (is_snapshot)
        return shell_command({"qemu-img", "convert", "-O", disk.format(), where, "standalone." + disk.format()});
    return shell_command({"qemu-img", "commit", "-b", where}) + " NEWEST." + disk.format() +
           " (the newest image of the chain, " +
           snapshot + " or one of its snapshots)";
}

}  // namespace

void check_relations(Disk& disk, const std::string& where, bool foreign_unlocked)
{
    auto foreign = disk.foreign_encryption();
    if (foreign && !foreign_unlocked && disk.foreign_adoptable())
        throw WrongDiskState(where + ": the disk is encrypted by " + *foreign + "; decrypt it with its passphrase: " +
                             shell_command({"vmcrypt", "decrypt", "--passphrase-file", "FILE", where}) +
                             ", or give it vmcrypt key slots without decrypting: " +
                             shell_command({"vmcrypt", "keys", "add", "--passphrase-file", "FILE", "--new-key-file",
                                            "KEK", where}));
    if (foreign && !foreign_unlocked && disk.can_unlock_foreign())
        throw WrongDiskState(where + ": the disk is encrypted by " + *foreign + "; decrypt it first with its "
                             "passphrase: " + shell_command({"vmcrypt", "decrypt", "--passphrase", where}) +
                             " (or --passphrase-file FILE), then run this command again");
    if (foreign && !foreign_unlocked)
        throw WrongDiskState(where + ": the disk is encrypted by " + *foreign +
                             "; vmcrypt does not touch it (decrypt it with the product that encrypted it)");

    DiskRelations relations = disk.relations();
    if (!relations.parents.empty())
        throw WrongDiskState(where + ": the disk is a snapshot of " + relations.parents.front() +
                             "; merge the chain first with: " + merge_command(disk, where, where, true));
    // A snapshot of a VMDK that vmcrypt encrypted contains what a program wrote over the ciphertext and the
    // ciphertext that copy-on-write copied, and no command can make plaintext of that. QEMU, in contrast,
    // decrypts a qcow2 backing image and writes plaintext into its overlays.
    if (!relations.children.empty() && disk.record() && !disk.data_changes_while_encrypted())
        throw WrongDiskState(where + ": the disk has snapshots made after it was encrypted (" +
                             join(relations.children, ", ") + " names it as parent); they hold writes over the "
                             "ciphertext, which neither decrypt nor consolidate-snapshots can make plaintext, so remove "
                             "them or move them out of the folder (and point the VM's .vmx back at " + where +
                             "), then run this command again");
    if (!relations.children.empty())
        throw WrongDiskState(where + ": the disk has snapshots (" + join(relations.children, ", ") +
                             " names it as parent); merge them first with: " +
                             merge_command(disk, where, relations.children.front(), false));
}

std::optional<std::filesystem::path> find_unfinished_merge(const std::filesystem::path& disk)
{
    std::filesystem::path absolute = std::filesystem::absolute(disk).lexically_normal();
    std::error_code error;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, error);
    std::filesystem::path intent = error ? absolute : canonical;
    intent += consolidate_intent_suffix;
    if (std::filesystem::exists(intent, error))
        return intent;
    return std::nullopt;
}

void check_no_unfinished_merge(const Disk& disk, const std::filesystem::path& path, const std::string& where,
                               DiskContent content)
{
    std::optional<std::filesystem::path> intent = find_unfinished_merge(path);
    std::string resume_disk = where;
    if (!intent) {
        std::optional<Disk::MergeInProgress> merge = disk.merge_in_progress();
        if (!merge)
            return;
        intent = merge->intent;
        resume_disk = merge->resume_disk;
    }
    std::string consolidate = shell_command({"vmcrypt", "consolidate-snapshots", resume_disk});
    if (content == DiskContent::plaintext)
        throw Interrupted(where + ": an unfinished consolidate-snapshots merge into this disk is recorded in " +
                          intent->string() + ", so the disk may hold only part of its snapshots' data; finish the "
                          "merge first with: " + consolidate);
    // An older vmcrypt could encrypt such a disk. consolidate-snapshots rejects an encrypted base, so the
    // way out is a decrypt, and decrypt does not call this check.
    throw Interrupted(where + ": the disk was encrypted while a consolidate-snapshots merge into it was unfinished "
                      "(recorded in " + intent->string() + "); decrypt it with " +
                      shell_command({"vmcrypt", "decrypt", where}) + " and its key options, then finish the merge "
                      "with: " + consolidate);
}

MetadataWrite prepare_encrypted_record(Disk& disk, EncryptionRecord record, const SecureBytes& dek,
                                       RewriteOptions& options)
{
    record.state = RecordState::encrypted;
    // A format whose data QEMU rewrites gets no dataCheck (see Disk::data_changes_while_encrypted). The
    // final write is still made at the end: a qcow2 header names areas that a resumed run only learns
    // from the journaled start write.
    const bool bind_to_data = !disk.data_changes_while_encrypted();
    record.data_check = bind_to_data ? std::string(44, 'A') : std::string();
    record.seal(dek);
    MetadataWrite placeholder = disk.record_update(record.to_fields());

    options.make_final_metadata = [&disk, record, &dek, bind_to_data]() mutable {
        if (bind_to_data)
            record.data_check = compute_data_check(disk, dek);
        record.seal(dek);
        return disk.record_update(record.to_fields());
    };
    return placeholder;
}


namespace {

// The command line option that gives the key of a slot type.
std::string key_option_for_slot(const std::string& type)
{
    if (type == "passphrase")
        return "the passphrase with --passphrase-file FILE (or --passphrase)";
    if (type == "key-file")
        return "the key file with --key-file FILE";
    if (type == "keystore")
        return "the key store with --keystore DIR (or VMCRYPT_KEYSTORE)";
    if (type == "kmip")
        return "the KMS configuration with --kms-config FILE";
    return "the key of slot type " + type;
}

}  // namespace

UnlockedKey unlock_key_slot(const RecordFields& fields, const std::vector<KeySource*>& sources,
                            const std::string& where)
{
    EncryptionRecord record = EncryptionRecord::from_fields(fields, where);

    std::set<std::string> slot_types;
    for (const KeySlot& slot : record.key_slots)
        slot_types.insert(slot.type);

    std::optional<Error> first_failure;
    bool first_failure_wrong_key = false;
    for (KeySource* source : sources) {
        for (std::size_t position = 0; position < record.key_slots.size(); ++position) {
            const KeySlot& slot = record.key_slots[position];
            if (slot.type != source->slot_type())
                continue;
            try {
                SecureBytes dek = source->unseal(slot);
                const std::size_t key_size = unit_cipher_key_size(record.cipher);
                if (dek.size() != key_size)
                    throw InvalidInput(where + ": the unwrapped DEK is " + std::to_string(dek.size()) +
                                       " bytes, expected " + std::to_string(key_size) + " for " + record.cipher);
                record.verify_mac(dek, where);
                return {std::move(dek), position, source};
            } catch (const WrongKey& e) {
                if (!first_failure) {
                    first_failure = e;
                    first_failure_wrong_key = true;
                }
            } catch (const KeyUnavailable& e) {
                if (!first_failure)
                    first_failure = e;
            }
        }
    }
    if (first_failure) {
        // A source names its key file or KMS provider. The disk comes first, so that a script that
        // unlocks many disks can tell which one failed.
        std::string message = first_failure->what();
        if (message.rfind(where + ":", 0) != 0)
            message = where + ": " + message;
        if (first_failure_wrong_key)
            throw WrongKey(message);
        throw KeyUnavailable(message);
    }

    std::vector<std::string> given;
    for (KeySource* source : sources)
        given.push_back(source->slot_type());
    std::vector<std::string> options;
    for (const std::string& type : slot_types)
        options.push_back(key_option_for_slot(type));
    throw NoMatchingKeySource(where + ": no given key source matches the disk's key slots (disk has: " +
                         join({slot_types.begin(), slot_types.end()}, ", ") + "; given: " +
                         (given.empty() ? std::string("none") : join(given, ", ")) + "); give " +
                         join(options, ", or ") + " for one of them");
}

std::vector<KeySource*> source_list(std::initializer_list<KeySources*> lists)
{
    std::vector<KeySource*> sources;
    for (KeySources* list : lists)
        for (auto& source : *list)
            sources.push_back(source.get());
    return sources;
}

std::string missing_journal_message(const std::string& where, const std::string& state,
                                    const std::filesystem::path& journal_path)
{
    return where + ": the encryption record state is \"" + state + "\" but the journal " + journal_path.string() +
           " is missing. If the interrupted run reached the disk by another path (a hard link, or its folder "
           "before a move), run the command on that path, next to which the journal " +
           journal_path.filename().string() + " lies; otherwise the operation cannot be finished safely, so restore "
           "the disk from a backup (an older copy of the journal would rewrite finished windows again)";
}

void reject_other_unfinished(const std::filesystem::path& path, const std::filesystem::path& disk_path,
                             const std::string& where, Operation unfinished, const std::filesystem::path& journal_path)
{
    std::optional<std::string> holder;
    try {
        holder = find_lock_holder(File::open(path, Access::read_only));
    } catch (const Error&) {
        // An unreadable file is reported by the command that finishes the operation.
    }
    if (holder)
        throw DiskInUse(where + ": the disk is in use (" + *holder + "), and an unfinished " + to_string(unfinished) +
                        " is recorded in " + journal_path.string() + ", so another run may be doing it now; wait "
                        "until it ends and run this command again");
    throw Interrupted(where + ": an unfinished " + to_string(unfinished) + " is recorded in " + journal_path.string() +
                      "; finish it first with: " + resume_command(unfinished, disk_path));
}

namespace {

// The disk's state after a failure before the journal existed, for the message.
std::string state_before_journal(Operation operation)
{
    switch (operation) {
    case Operation::encrypt:
        return "nothing is encrypted yet and the disk is still valid plaintext with the same guest data (a qcow2 "
               "image may keep decompressed copies of its compressed clusters and leaked clusters, which the next "
               "run repairs)";
    case Operation::rekey:
        return "nothing is rekeyed yet and the disk is still valid under its old key (a qcow2 image may keep a "
               "leaked new LUKS area, which the next run repairs)";
    default:
        return "nothing was written";
    }
}

}  // namespace

OperationReport add_resume_hint(Operation operation, const std::filesystem::path& disk_path,
                                const std::function<OperationReport()>& operation_body)
{
    std::error_code ec;
    const std::filesystem::path journal_path =
        std::filesystem::exists(disk_path, ec) ? Journal::path_for(std::filesystem::weakly_canonical(disk_path))
                                               : std::filesystem::path();
    const bool had_journal = !journal_path.empty() && std::filesystem::exists(journal_path, ec);
    try {
        return operation_body();
    } catch (const Interrupted&) {
        throw;
    } catch (const FreeSpaceCheckFailed&) {
        throw;  // nothing was written, and the message states it
    } catch (const Error& e) {
        const bool no_space = dynamic_cast<const NoSpace*>(&e) != nullptr;
        const std::string fix = no_space ? "free space on that file system" : "fix the cause";
        if (journal_path.empty() || !std::filesystem::exists(journal_path, ec)) {
            // "Nothing changed yet": a failed read or write before the journal existed. Only a format's
            // prepare step (a qcow2 image's decompressed clusters and new LUKS area) may have written,
            // and it leaves a valid disk.
            if (e.code() != ExitCode::io_error)
                throw;
            const std::string message = std::string(e.what()) + "; " + state_before_journal(operation) + ": " + fix +
                                        " and run `" + resume_command(operation, disk_path) + "` again";
            if (no_space)
                throw NoSpace(message);
            throw IoError(message);
        }
        // "Recovery needed": the journal exists, so the disk is mid-operation and consistent. Say how to
        // finish.
        if (had_journal && e.code() != ExitCode::io_error)
            throw;
        throw Error(e.code(), std::string(e.what()) + "; the " + to_string(operation) +
                                  " is unfinished but the disk is consistent: " + fix + " and run `" +
                                  resume_command(operation, disk_path) + "` to resume");
    }
}

std::unique_ptr<Disk> open_for_resume(const std::filesystem::path& path, const std::string& where,
                                      const JournalEntry& newest, const DiskOpener& opener)
{
    if (auto lock_folder = find_vmware_lock(path))
        throw DiskInUse(where + ": VMware lock folder " + lock_folder->string() +
                        " exists; power off the VM (or remove a stale lock folder) and retry");

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
    return disk;
}

}  // namespace vmcrypt
