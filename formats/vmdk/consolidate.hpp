#pragma once
// consolidate-snapshots: merge a VMDK snapshot chain into its base, offline and in place.
//
// Crash safety. An intent file "<base>.vmcrypt-consolidate" (JSON, replaced atomically) records the plan
// before the first write, and its phase decides what a re-run does:
//   copy   - the deltas' data is being copied into the base. Only guest ranges that some delta covers are
//            written, and the base CID stays, so the top of the chain reads the same throughout. A re-run
//            copies again, which gives the same base.
//   switch - COMMIT POINT: the base holds the current state, durably. A re-run finishes the switch: new
//            base CID, .vmx and .vmsd updates, removal of the merged delta files, removal of the intent.
// With --delete-other-branches the other branches' files are removed right after the intent is written,
// before the base changes, so that no other snapshot ever reads a base that changed under it.

#include "formats/vmdk/snapshot_chain.hpp"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

struct ConsolidateOptions {
    BranchPolicy branches = BranchPolicy::reject;
    bool dry_run = false;
    // Called after each merged range with the bytes done and the total (data and zeros).
    std::function<void(std::uint64_t done, std::uint64_t total)> on_progress;
    // When set and true, the copy stops after the current range with Interrupted; a re-run resumes.
    const std::atomic<bool>* stop_requested = nullptr;
};

struct ConsolidateReport {
    std::string strategy;                    // "commit" (deltas into the base) or "stream" (into the top)
    std::string disk;                        // the base descriptor: the file that is the disk now
    std::string top;                         // the newest snapshot, whose state the base now contains
    std::vector<std::string> merged;         // delta descriptors merged, newest first
    std::vector<std::string> removed_files;  // every file of the merged deltas
    std::vector<std::string> branch_files;   // every file of the other branches
    std::vector<std::string> vmx_files;      // .vmx files repointed from the top to the base
    std::vector<std::string> vmsd_files;     // .vmsd files whose snapshot list is emptied
    std::uint64_t data_bytes = 0;            // copied from the deltas
    std::uint64_t zero_bytes = 0;            // zeroed grains
    std::uint64_t appended_bytes = 0;        // at most this much growth of sparse base files
    std::string old_cid;
    std::string new_cid;
    bool resumed = false;
    bool dry_run = false;
};

// Merges (or, with dry_run, plans) the chain of `disk`, or resumes an interrupted merge of it. Throws
// vmcrypt::Error subclasses; an error before the intent file exists leaves every file unchanged.
ConsolidateReport consolidate_snapshots(const std::filesystem::path& disk, const ConsolidateOptions& options);

// The descriptor with `cid` as its CID, written with as many digits as the old value, and as the last 8
// digits of a 32-digit ddb.longContentID, which VMware keeps equal to the CID. No other byte changes.
Descriptor descriptor_with_cid(const Descriptor& descriptor, const std::string& cid);

// The intent file of a base disk.
std::filesystem::path consolidate_intent_path(const std::filesystem::path& base);

}  // namespace vmcrypt::vmdk
