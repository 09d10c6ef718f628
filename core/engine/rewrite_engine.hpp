#pragma once
// The crash-safe rewrite engine: transforms a disk's data runs in place, window by window.
//
// Protocol, for each window of the run stream:
//   1. read the window and hash each 512-byte unit's old content;
//   2. append a journal entry naming the window with those hashes, fdatasync it  (COMMIT POINT)
//   3. transform the window and write it back;
//   4. fdatasync every file the window touched; progress then advances with the next entry.
// After a crash the newest journal entry names at most one window in an unknown state. Each of its units
// is either old (its hash matches) or new, so recovery transforms exactly the old ones; running recovery
// again finds only new units and changes nothing. Only 512-byte writes are assumed atomic.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"
#include "core/engine/journal.hpp"

#include <atomic>
#include <functional>

namespace vmcrypt {

struct Progress {
    std::uint64_t bytes_done = 0;
    std::uint64_t bytes_total = 0;
};

// Whether decrypt compares the record's dataCheck with the disk's data before the first write.
enum class DataCheckMode { enforce, skip };

struct RewriteOptions {
    std::uint64_t window_size = 0;                       // bytes, a multiple of 512; 0: window_size_for()
    unsigned threads = 2;                                // crypto threads
    const std::atomic<bool>* stop_requested = nullptr;   // checked at window boundaries
    std::function<void(const Progress&)> on_progress;
    std::string resume_command;                          // for messages: "vmcrypt encrypt disk.vmdk"
    DataCheckMode data_check = DataCheckMode::enforce;   // decrypt only
    // When set, called once all data is rewritten to make the final metadata write, which may then
    // depend on the new data. Its result replaces the final metadata passed to start() or resume() and
    // must not be larger.
    std::function<MetadataWrite()> make_final_metadata;
};

// The metadata writes around a new operation's data (one marks it in progress, one completes it), and
// the record the journal keeps for unlocking on resume.
struct RewritePlan {
    Operation operation = Operation::encrypt;
    MetadataWrite start_metadata;
    MetadataWrite final_metadata;
    RecordFields journal_record;
};

struct RewriteResult {
    std::uint64_t bytes_total = 0;      // data bytes of the disk
    std::uint64_t bytes_rewritten = 0;  // rewritten by this run
    bool resumed = false;
};

// The window size of a new operation on `disk`: options.window_size when set, else 4 MiB when every
// file of the disk is on tmpfs and 16 MiB otherwise. On a device each window costs syncs, which larger
// windows spread over more data. On tmpfs syncs are free, and a window's cost is the CPU cache it takes.
// Its old content is read when it is hashed and again when it is transformed. With two windows in
// flight, 4 MiB windows took about 10% less CPU time than 16 MiB ones on a 4 GiB disk (bench/README.md),
// likely because they stay in the cache between the two reads.
std::uint64_t window_size_for(const RewriteOptions& options, Disk& disk);

class RewriteEngine {
public:
    // `dek` keys the journal and is the DEK of the result (encrypt, rekey) or of the input (decrypt).
    // A deep rekey also passes `previous_dek`, the DEK the data is under now.
    RewriteEngine(Disk& disk, const SecureBytes& dek, RewriteOptions options,
                  const SecureBytes* previous_dek = nullptr);

    // Starts a new operation. A failure before the journal exists changed nothing; after it, the disk
    // is consistent and recoverable and re-running the same command finishes the operation.
    RewriteResult start(const RewritePlan& plan);

    // Finishes an unfinished operation from its journal (already opened with the DEK).
    RewriteResult resume(Journal journal, const MetadataWrite& final_metadata);

private:
    struct Impl;
    Disk& disk_;
    const SecureBytes& dek_;
    const SecureBytes* previous_dek_;
    RewriteOptions options_;
};

// Writes the metadata of a journal entry straight into the metadata file, before the disk is parsed: a
// crash during an in-place metadata write (an embedded descriptor) can leave it unparseable, and the
// journal contains the complete bytes. The caller has verified the journal with the DEK.
void replay_metadata(const std::filesystem::path& metadata_file, const MetadataWrite& update);

}  // namespace vmcrypt
