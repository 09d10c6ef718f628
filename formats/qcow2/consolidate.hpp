#pragma once
// consolidate-snapshots for qcow2: merge a backing chain into its base and delete internal snapshots,
// offline and in place.
//
// Chain merge. The chain is validated and the guest view of the top composed (guest_view.hpp) before an
// intent file "<base>.vmcrypt-consolidate-qcow2" records the plan. The strategy is the one that copies
// fewer bytes: commit writes the overlays' data into the base; stream writes the data that the top
// reads through from below into the top, which then replaces the base file (qcow2 base only). The
// intent's phase decides what a re-run does:
//   copy   - the target's internal snapshots are deleted, its refcounts made exact, and the data
//            written (base_merge.hpp). Only guest ranges that the top reads through to the data copied
//            are written, so the top reads the same throughout, and a re-run repeats the copy with the
//            same result.
//   switch - COMMIT POINT: the target holds the top's guest view durably. A re-run finishes the
//            switch: for stream, the top's backing file name is dropped (one sector write) and the top
//            renamed over the base; then the overlay files left are removed (top first), then the
//            intent file.
// Before the copy phase changes any layer, the images of other branches (--delete-other-branches) are
// removed, children first, so that no image ever reads a layer that changed under it. A re-run in the
// copy phase removes those left. For commit, a base smaller than the top is grown to the top's guest
// size first (grow.hpp for qcow2, ftruncate for raw). The grow is idempotent, so a re-run copes with a
// base that is grown already. Stream needs no grow: the top keeps its own size.
// An image without a backing file only has its internal snapshots deleted and refcounts made exact
// (refcount_repair.hpp); that needs no intent file, because every run ends with exact refcounts.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

enum class BranchHandling { reject, delete_other_branches };

struct ConsolidateOptions {
    bool dry_run = false;
    BranchHandling branches = BranchHandling::reject;
    std::function<void(std::uint64_t done, std::uint64_t total)> on_progress;
    const std::atomic<bool>* stop_requested = nullptr;
};

struct ConsolidateReport {
    std::string strategy = "commit";             // "commit" (into the base) or "stream" (into the top)
    std::string disk;                            // the image that is the disk now (the base)
    std::string base_format;                     // "qcow2" or "raw"
    std::string top;                             // the image whose guest view the disk now has
    std::vector<std::string> merged;             // overlays merged, newest first
    std::vector<std::string> removed_files;      // overlay files removed
    std::vector<std::string> branch_files;       // images of other branches removed, children first
    std::vector<std::string> deleted_snapshots;  // "IMAGE: snapshot ID NAME"
    std::uint64_t data_bytes = 0;                // guest bytes copied from the overlays
    std::uint64_t zero_bytes = 0;                // guest bytes the overlays mark zero
    std::uint64_t refcounts_lowered = 0;         // leaked or snapshot clusters whose refcount dropped
    std::uint64_t grow_base_to = 0;              // guest bytes the base grows to; 0 when it keeps its size
    bool resumed = false;
    bool dry_run = false;
};

// True when `disk` is a qcow2 image, or is named by the intent file of an unfinished qcow2 merge.
bool is_qcow2_consolidation(const std::filesystem::path& disk);

// An unfinished merge that a qcow2 image belongs to.
struct UnfinishedMerge {
    std::filesystem::path intent_path;
    std::string phase;     // "copy" or "switch"
    std::string strategy;  // "commit" or "stream"
    std::string base;
    std::string top;
};

// Finds the intent file of an unfinished merge that `disk` belongs to (as its base, top, an overlay, or
// an image of another branch that the merge removes). Only reads files. Throws InvalidInput naming the
// intent file when it is damaged.
std::optional<UnfinishedMerge> find_unfinished_qcow2_merge(const std::filesystem::path& disk);

// Merges (or, with dry_run, plans) the chain below `disk` or resumes an interrupted merge of it; for an
// image without a backing file, deletes its internal snapshots. Throws vmcrypt::Error subclasses; an
// error before the intent file exists leaves every file unchanged.
ConsolidateReport consolidate_qcow2(const std::filesystem::path& disk, const ConsolidateOptions& options);

}  // namespace vmcrypt::qcow2
