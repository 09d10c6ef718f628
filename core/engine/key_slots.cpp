// Shallow rekey and key-slot changes: record-only updates through commit_key_change().

#include "core/engine/journal.hpp"
#include "core/engine/key_change.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/engine/rekey.hpp"
#include "core/engine/resume_hint.hpp"
#include "core/error.hpp"
#include "core/text/shell_words.hpp"

#include <algorithm>
#include <map>

namespace vmcrypt {

namespace {

SlotDescription describe_slot(const KeySlot& slot, std::uint32_t id)
{
    auto parameter = [&](const std::string& name) {
        auto it = slot.params.find(name);
        return it != slot.params.end() ? it->second : std::string();
    };
    // A kmip slot names its KEK by provider and key UID; a provider id contains no '/', so the pair stays
    // unambiguous.
    std::string kek = slot.type == "kmip" ? parameter("provider") + "/" + parameter("key") : parameter("kek");
    return {id, slot.type, kek, parameter("created")};
}

std::string id_list(const EncryptionRecord& record)
{
    std::vector<std::string> ids;
    for (std::uint32_t id : record.slot_ids())
        ids.push_back(std::to_string(id));
    return join(ids, ", ");
}

// True when `sealed` (just made by `source`) wraps under the same KEK as `existing`. Slots that name
// their KEK (keystore and key-file by "kek", kmip by "provider" and "key") compare those parameters. A
// passphrase slot names none, because its KEK comes from the passphrase and a random salt, so the source
// tries to open it.
bool same_kek(const KeySlot& sealed, KeySource& source, const KeySlot& existing)
{
    if (sealed.type != existing.type)
        return false;
    if (!sealed.params.count("kdf")) {
        auto without_time = [](std::map<std::string, std::string> params) {
            params.erase("created");
            return params;
        };
        return without_time(sealed.params) == without_time(existing.params);
    }
    try {
        source.unseal(existing);
        return true;
    } catch (const Error&) {
        return false;
    }
}

// Rejects a new slot whose KEK already has a slot: a rekey to the KEK in use, or a second copy of a slot.
void reject_same_kek(const KeySlot& sealed, KeySource& source, const EncryptionRecord& record,
                     std::optional<std::uint32_t> replaced_id, const std::string& where)
{
    std::vector<std::uint32_t> ids = record.slot_ids();
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (!same_kek(sealed, source, record.key_slots[i]))
            continue;
        if (replaced_id && *replaced_id == ids[i])
            throw WrongDiskState(where + ": the new key (" + source.description() + ") is the KEK of key slot " +
                                 std::to_string(ids[i]) + ", which the disk already uses, so the rekey would change "
                                 "nothing; give another new key (--new-key-file, --new-passphrase-file, or "
                                 "--new-keystore without --new-kek-id to create a KEK)");
        throw WrongDiskState(where + ": the new key (" + source.description() + ") already opens key slot " +
                             std::to_string(ids[i]) + " of the disk; nothing to add (list the slots with: " +
                             shell_command({"vmcrypt", "keys", "list", where}) + ")");
    }
}

}  // namespace

std::string SlotDescription::summary() const
{
    std::string text = "slot " + std::to_string(id) + ": " + type;
    if (!kek_id.empty())
        text += " kek=" + kek_id;
    if (!created.empty())
        text += ", created " + created;
    return text;
}

std::vector<SlotDescription> describe_slots(const EncryptionRecord& record)
{
    std::vector<SlotDescription> slots;
    std::vector<std::uint32_t> ids = record.slot_ids();
    for (std::size_t i = 0; i < ids.size(); ++i)
        slots.push_back(describe_slot(record.key_slots[i], ids[i]));
    std::sort(slots.begin(), slots.end(), [](const SlotDescription& a, const SlotDescription& b) { return a.id < b.id; });
    return slots;
}

KeySlotReport change_key_slots(const std::filesystem::path& disk_path, KeySources& unlock, KeySources& seal,
                               const KeySlotRequest& request, const DiskOpener& opener)
{
    std::error_code ec;
    if (!std::filesystem::exists(disk_path, ec))
        throw InvalidInput(disk_path.string() + ": file not found; check the path of the disk");
    const std::filesystem::path path = std::filesystem::weakly_canonical(disk_path);
    const std::string where = disk_path.string();

    KeySlotReport report;
    report.disk = disk_path;

    // A change that a crash interrupted is finished, and nothing else is done in this run: when the
    // user re-runs the interrupted command, doing it again would rekey a second time.
    if (finish_key_change(path, source_list({&unlock, &seal}), opener, where)) {
        std::unique_ptr<Disk> disk = opener(path, Access::read_only);
        report.slots = describe_slots(EncryptionRecord::from_fields(disk->record().value(), where));
        report.finished_interrupted = true;
        return report;
    }

    const std::filesystem::path journal_path = Journal::path_for(path);
    if (std::optional<JournalSummary> summary = Journal::peek(journal_path))
        reject_other_unfinished(path, disk_path, where, summary->header.operation, journal_path);

    std::unique_ptr<Disk> disk = opener(path, Access::read_write);
    lock_disk(*disk);
    if (auto foreign = disk->foreign_encryption()) {
        if (!disk->foreign_adoptable())
            throw WrongDiskState(where + ": the disk is encrypted by " + *foreign + "; vmcrypt does not manage its keys");
        if (request.change == SlotChange::add) {
            adopt_foreign_encryption(*disk, unlock, seal, report, where);
            return report;
        }
        throw WrongDiskState(where + ": the disk is encrypted by " + *foreign + " and has no vmcrypt key slots yet; "
                             "give it one first, keeping its passphrase, with: " +
                             shell_command({"vmcrypt", "keys", "add", "--passphrase-file", "FILE", "--new-key-file",
                                            "KEK", where}) +
                             " (or any other --new-* key option)");
    }
    std::optional<RecordFields> fields = disk->record();
    if (!fields)
        throw WrongDiskState(where + ": the disk is not encrypted by vmcrypt (no ddb.vmcrypt record), so it has no "
                             "key slots; encrypt it first with: vmcrypt encrypt " + where);
    const EncryptionRecord before = EncryptionRecord::from_fields(*fields, where);
    if (before.state != RecordState::encrypted)
        throw WrongDiskState(missing_journal_message(where, to_string(before.state), journal_path));

    // Validate everything and unlock before the first write.
    UnlockedKey key = unlock_key_slot(*fields, source_list({&unlock}), where);
    const std::vector<std::uint32_t> ids = before.slot_ids();
    const std::uint32_t unlocked_id = ids[key.slot_position];
    EncryptionRecord after = before;
    after.key_slot_ids = ids;

    if (request.change == SlotChange::remove) {
        std::optional<std::size_t> position = before.slot_position(request.slot_id);
        if (!position)
            throw UsageError("--slot " + std::to_string(request.slot_id) + ": " + where + " has no key slot " +
                             std::to_string(request.slot_id) + " (its slots: " + id_list(before) + ")");
        if (before.key_slots.size() == 1)
            throw WrongDiskState(where + ": key slot " + std::to_string(request.slot_id) + " is the disk's only key "
                                 "slot, and without it no key opens the data; add another slot first (vmcrypt keys "
                                 "add) or decrypt the disk");
        report.removed.push_back(describe_slot(before.key_slots[*position], request.slot_id));
        after.remove_key_slot(request.slot_id);
        after.seal(key.dek);
        commit_key_change(*disk, key.dek, before, after);
        report.slots = describe_slots(after);
        return report;
    }

    if (seal.empty())
        throw UsageError("rekey: no new key source given");
    // The new slots are added before a replaced one is removed, as add_key_slot() counts them.
    if (after.key_slots.size() + seal.size() > max_key_slots)
        throw InvalidInput(where + ": the encryption record has " + std::to_string(after.key_slots.size()) +
                           " key slots, and " + std::to_string(seal.size()) + " more would pass the maximum of " +
                           std::to_string(max_key_slots) + "; remove one first with: " +
                           command_with_unlock_keys({"vmcrypt", "keys", "remove", "--slot", "ID"}, where));
    for (auto& source : seal)
        source->check_ready();

    const std::optional<std::uint32_t> replaced =
        request.change == SlotChange::replace ? std::optional<std::uint32_t>(unlocked_id) : std::nullopt;
    try {
        for (auto& source : seal) {
            KeySlot slot = seal_new_slot(*source, key.dek);
            reject_same_kek(slot, *source, after, replaced, where);
            std::uint32_t id = after.add_key_slot(slot);
            report.added.push_back(describe_slot(slot, id));
        }
        if (replaced) {
            report.removed.push_back(describe_slot(before.key_slots[key.slot_position], *replaced));
            after.remove_key_slot(*replaced);
        }
        after.seal(key.dek);
        commit_key_change(*disk, key.dek, before, after);
    } catch (...) {
        // Until the journal exists no record refers to a KEK created for the new slots.
        if (!std::filesystem::exists(journal_path, ec))
            for (auto& source : seal)
                source->discard_sealed();
        throw;
    }
    report.slots = describe_slots(after);
    return report;
}

}  // namespace vmcrypt
