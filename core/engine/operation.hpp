#pragma once
// encrypt and decrypt as whole operations: open and lock the disk, check its state, unlock or create the
// keys, then start or resume the rewrite. Everything that can fail for bad input fails here before the
// first write, and leaves every file of the disk unchanged.

#include "core/disk.hpp"
#include "core/engine/journal.hpp"
#include "core/engine/rewrite_engine.hpp"
#include "core/keys/key_source.hpp"

#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

namespace vmcrypt {

using DiskOpener = std::function<std::unique_ptr<Disk>(const std::filesystem::path&, Access)>;
using KeySources = std::vector<std::unique_ptr<KeySource>>;

struct OperationReport {
    std::filesystem::path disk;
    Operation operation = Operation::encrypt;
    RewriteResult result;
    std::vector<std::string> key_slots;  // "keystore kek=<uuid>", one per slot written or used
};

// Runs (or resumes) encrypt or decrypt. For encrypt, `sources` seal one key slot each; for decrypt and for
// a resume, the first source that unlocks a slot of its type provides the DEK.
OperationReport run_operation(Operation operation, const std::filesystem::path& disk_path, KeySources& sources,
                              RewriteOptions options, const DiskOpener& opener);

// Unlocks the DEK from the record's key slots with the given sources; verifies the record MAC.
SecureBytes unlock_dek(const RecordFields& fields, KeySources& sources, const std::string& where);

// Refuses, with DiskInUse, a disk whose files carry a VMware lock folder; then takes the exclusive lock on
// every file.
void lock_disk(Disk& disk);

}  // namespace vmcrypt
