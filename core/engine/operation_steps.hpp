#pragma once
// Steps shared by the whole-disk operations (encrypt, decrypt, deep rekey) and the key-slot changes:
// state checks, new DEKs, unlocking, and the record an operation ends with.

#include "core/disk.hpp"
#include "core/engine/journal.hpp"
#include "core/engine/operation.hpp"
#include "core/engine/resume_hint.hpp"
#include "core/engine/rewrite_engine.hpp"
#include "core/keys/key_source.hpp"
#include "core/record/encryption_record.hpp"

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt {

std::string join(const std::vector<std::string>& items, const std::string& separator);

// "keystore kek=<uuid>": a slot's type and KEK id, for reports.
std::string slot_summary(const KeySlot& slot);

// A random 64-byte XTS key whose halves differ.
SecureBytes new_dek();

// Checks that the disk may be rewritten at all: no foreign encryption (unless vmcrypt unlocked it to
// decrypt it), no snapshots.
void check_relations(Disk& disk, const std::string& where, bool foreign_unlocked = false);

// The suffix of the intent file that an unfinished consolidate-snapshots run keeps next to the base
// disk of the chain: "<base>.vmcrypt-consolidate", the base's path with symbolic links resolved.
inline constexpr const char* consolidate_intent_suffix = ".vmcrypt-consolidate";

// Returns the intent file of an unfinished consolidate-snapshots merge into `disk`, or nullopt.
std::optional<std::filesystem::path> find_unfinished_merge(const std::filesystem::path& disk);

enum class DiskContent { plaintext, encrypted };

// Rejects with Interrupted a disk that an unfinished consolidate-snapshots merge writes into, naming
// the command that finishes it: the disk may hold only part of its snapshots' data.
void check_no_unfinished_merge(const Disk& disk, const std::filesystem::path& path, const std::string& where,
                               DiskContent content);

// Returns the final metadata of an encrypt, sized with a placeholder check value so that an embedded
// descriptor without room is rejected before the first write. Sets the options to compute the real
// check value once all data is ciphertext.
MetadataWrite prepare_encrypted_record(Disk& disk, EncryptionRecord record, const SecureBytes& dek,
                                       RewriteOptions& options);


// Opens and locks a disk whose unfinished operation the journal entry `newest` records. Nothing is written
// unless the metadata cannot be parsed: a crash inside an in-place metadata write can leave it so, and then
// the entry's complete metadata bytes are written back first.
std::unique_ptr<Disk> open_for_resume(const std::filesystem::path& path, const std::string& where,
                                      const JournalEntry& newest, const DiskOpener& opener);

// The DEK and the slot that opened it.
struct UnlockedKey {
    SecureBytes dek;
    std::size_t slot_position = 0;   // in EncryptionRecord::key_slots
    KeySource* source = nullptr;     // the source that unsealed that slot
};

// None of the given key sources has the type of a key slot, so no key was tried.
struct NoMatchingKeySource : KeyUnavailable {
    explicit NoMatchingKeySource(const std::string& m) : KeyUnavailable(m) {}
};

// Unlocks the DEK from the record's key slots with the first source that opens one, and verifies the
// record MAC. Throws WrongKey or KeyUnavailable (the first failure) when none does, and
// NoMatchingKeySource, naming the options to give, when no source fits a slot.
UnlockedKey unlock_key_slot(const RecordFields& fields, const std::vector<KeySource*>& sources,
                            const std::string& where);

// Pointers to the sources of several lists, in order.
std::vector<KeySource*> source_list(std::initializer_list<KeySources*> lists);

// The message for a record in state `state` (encrypting, decrypting, rekeying) without its journal.
std::string missing_journal_message(const std::string& where, const std::string& state,
                                    const std::filesystem::path& journal_path);

// Throws for a command that finds another operation's journal: DiskInUse when a process holds the
// disk's lock (another vmcrypt run may be doing that operation right now), else Interrupted naming the
// command that finishes it. `path` is the disk's metadata file.
[[noreturn]] void reject_other_unfinished(const std::filesystem::path& path, const std::filesystem::path& disk_path,
                                          const std::string& where, Operation unfinished,
                                          const std::filesystem::path& journal_path);

// Runs `operation_body`. When it fails after its journal exists (an I/O error, or a first failure of a
// new operation), adds to the message that the disk is consistent and how to resume. Failures before
// the journal existed changed nothing and keep their message.
OperationReport add_resume_hint(Operation operation, const std::filesystem::path& disk_path,
                                const std::function<OperationReport()>& operation_body);

}  // namespace vmcrypt
