// consolidate-snapshots for qcow2: planning, the copy phase, the switch and resuming after a crash.

#include "formats/qcow2/consolidate.hpp"

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/locks.hpp"
#include "core/log.hpp"
#include "core/text/shell_words.hpp"
#include "formats/qcow2/backing_chain.hpp"
#include "formats/qcow2/base_merge.hpp"
#include "formats/qcow2/grow.hpp"
#include "formats/qcow2/merge_intent.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "formats/qcow2/refcount_repair.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <string_view>

namespace vmcrypt::qcow2 {

namespace {

// A refusal of a resume whose message names the command that finishes the merge already, so that
// consolidate_qcow2() does not add a second one.
struct ResumeRefused : WrongDiskState {
    using WrongDiskState::WrongDiskState;
};

using FoundIntent = std::pair<std::filesystem::path, MergeIntent>;

std::optional<FoundIntent> intent_next_to(const std::filesystem::path& base, const std::filesystem::path& disk)
{
    const std::filesystem::path path = merge_intent_path(base);
    std::optional<MergeIntent> intent = read_merge_intent(path);
    if (intent && (intent->mentions(disk) || intent->base == base.string()))
        return FoundIntent{path, *intent};
    return std::nullopt;
}

// Finds the intent of an unfinished merge that `disk` belongs to: next to the disk if it is the base,
// in the disk's folder or through a link file there (a removed overlay, or a top without its backing
// file name), or next to a backing file of the disk.
std::optional<FoundIntent> find_intent(const std::filesystem::path& disk)
{
    const std::filesystem::path path = absolute_path(disk);
    if (auto found = intent_next_to(path, path))
        return found;

    std::error_code error;
    std::filesystem::directory_iterator entry(path.parent_path(), error);
    for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
        std::filesystem::path intent_path = entry->path();
        if (intent_path.extension() == merge_intent_link_extension)
            intent_path = read_merge_intent_link(intent_path);  // a stale link names an intent that is gone
        else if (intent_path.extension() != ".vmcrypt-consolidate-qcow2")
            continue;
        std::optional<MergeIntent> intent = read_merge_intent(intent_path);
        if (intent && intent->mentions(path))
            return FoundIntent{intent_path, *intent};
    }

    // Up the backing files, without validating them: the merge may have changed the base already.
    std::filesystem::path current = path;
    for (std::size_t depth = 0; depth < max_backing_depth && has_qcow2_magic(current); ++depth) {
        std::string backing;
        try {
            File file = File::open(current, Access::read_only);
            backing = parse_header(read_cluster0(file), file.size(), current.string()).backing_file;
        } catch (const Error&) {
            return std::nullopt;
        }
        if (backing.empty())
            return std::nullopt;
        std::filesystem::path next = backing;
        current = absolute_path(next.is_absolute() ? next : current.parent_path() / next);
        if (auto found = intent_next_to(current, path))
            return found;
    }
    return std::nullopt;
}

ConsolidateReport report_of(const MergeIntent& intent)
{
    ConsolidateReport report;
    report.strategy = intent.strategy == MergeStrategy::commit ? "commit" : "stream";
    report.disk = intent.base;
    report.base_format = intent.base_format;
    report.top = intent.top;
    report.merged.assign(intent.overlays.rbegin(), intent.overlays.rend());
    report.removed_files = intent.remove_files;
    report.branch_files = intent.branch_files;
    report.grow_base_to = intent.grow_base_to;
    return report;
}

std::vector<std::string> snapshot_names(const ChainLayer& layer)
{
    std::vector<std::string> names;
    for (const Snapshot& snapshot : layer.snapshots)
        names.push_back(layer.name() + ": snapshot " + snapshot.id + " " + snapshot.name);
    return names;
}

// Rejects a qcow2 base whose clusters vmcrypt cannot account for, or whose refcounts are too low for
// its active tables. Writes nothing.
void check_base_refcounts(const ChainLayer& base)
{
    check_references_knowable(base.header, base.name());
    Refcounts refcounts = Refcounts::load(*base.file, base.header, base.name());
    Header active = base.header;
    active.nb_snapshots = 0;  // snapshots only add references, so the active ones are a lower bound
    check_no_missing_refcounts(count_active_references(*base.file, active, refcounts, base.name()), refcounts,
                               base.name());
}

// Deletes the internal snapshots of a qcow2 layer (if any) and makes its refcounts exact.
RefcountRepair clean_up_layer(ChainLayer& base)
{
    if (base.header.nb_snapshots > 0) {
        drop_snapshot_table(*base.file, base.header);
        log_info(base.name() + ": deleted " + std::to_string(base.snapshots.size()) + " internal snapshots");
        base.snapshots.clear();
    }
    Refcounts refcounts = Refcounts::load(*base.file, base.header, base.name());
    RefcountRepair repair = make_refcounts_exact(*base.file, base.header, refcounts, base.name());
    if (repair.lowered != 0 || repair.flags_changed != 0)
        log_info(base.name() + ": refcounts made exact: " + std::to_string(repair.lowered) + " lowered, " +
                 std::to_string(repair.flags_changed) + " COPIED flags changed");
    return repair;
}

void remove_file_durably(const std::string& path, std::string_view fault)
{
    std::error_code error;
    if (!std::filesystem::remove(path, error) && error)
        throw IoError(path + ": removing the file failed: " + error.message());
    sync_directory(std::filesystem::path(path).parent_path());
    fault_point(fault);
}

// Rejects a merge that would change what images outside the chain read, unless `handling` lets the
// merge remove them. An image that uses the top is never removed: the top is then not the newest image
// of its branch, and the user named the wrong image.
void check_branches(const ChainLayer& top, const std::vector<BranchImage>& branches, BranchHandling handling)
{
    if (branches.empty())
        return;
    std::string list;
    std::string top_children;
    for (const BranchImage& image : branches) {
        list += (list.empty() ? "" : ", ") + image.description();
        if (image.backing == top.path)
            top_children += (top_children.empty() ? "" : ", ") + image.path.string();
    }
    if (!top_children.empty())
        throw WrongDiskState(top.name() + ": other images use it as their backing file (" + top_children +
                             "), so it is not the newest image of its branch; run consolidate-snapshots on the "
                             "newest image, the one the VM uses");
    if (handling == BranchHandling::reject)
        throw WrongDiskState(top.name() + ": other images use this chain as their backing file, and merging would "
                             "change what they read: " + list + "; to keep only this branch and delete the other "
                             "branches' images, add --delete-other-branches, or merge with qemu-img commit");
}

// Opens (and with read_write, locks) every branch image, so that an image a VM uses is reported
// before the first write and no VM can open one until it is removed.
std::vector<File> lock_branch_images(const std::vector<BranchImage>& branches, Access access)
{
    std::vector<File> files;
    for (const BranchImage& image : branches)
        files.push_back(open_image_locked(image.path, access));
    return files;
}

// Removes the images of other branches that are left, children first, so that no image is ever left
// without its backing file. Runs before any layer changes.
void remove_branch_images(const MergeIntent& intent, std::vector<File>& locks)
{
    for (const std::string& file : intent.branch_files) {
        std::error_code error;
        if (std::filesystem::exists(file, error)) {
            remove_file_durably(file, "qcow2-consolidate-branch-file-removed");
            log_info(file + ": removed (another branch)");
        }
    }
    locks.clear();
}

// Grows the base to the top's guest size before the copy (commit only). Idempotent.
void grow_base(ChainLayer& base, Refcounts* refcounts, std::uint64_t size)
{
    if (size <= base.size)
        return;
    if (base.format == LayerFormat::qcow2) {
        grow_qcow2_image(*base.file, base.header, *refcounts, size, base.name());
    } else {
        base.file->truncate(size);
        base.file->sync_data();
    }
    fault_point("qcow2-consolidate-base-grown");
    log_info(base.name() + ": guest size grown from " + std::to_string(base.size) + " to " + std::to_string(size) +
             " bytes");
    base.size = size;
}

// The link files of a merge: one per overlay outside the base's folder (see merge_intent.hpp).
std::vector<std::filesystem::path> intent_links(const MergeIntent& intent)
{
    std::vector<std::filesystem::path> links;
    const std::filesystem::path base_folder = std::filesystem::path(intent.base).parent_path();
    for (const std::string& overlay : intent.overlays)
        if (std::filesystem::path(overlay).parent_path() != base_folder)
            links.push_back(merge_intent_link_path(overlay));
    return links;
}

// Writes the link files that are missing (an intent of an older vmcrypt has none). Before the switch.
void write_intent_links(const MergeIntent& intent, const std::filesystem::path& intent_path)
{
    for (const std::filesystem::path& link : intent_links(intent)) {
        std::error_code error;
        if (!std::filesystem::exists(link, error))
            write_merge_intent_link(link, intent_path);
    }
}

// After the commit point: removes the overlays that are left (top first, so that no overlay is ever left
// without its backing file), then the intent file.
void finish_switch(const MergeIntent& intent, const std::filesystem::path& intent_path)
{
    std::error_code exists_error;
    if (intent.strategy == MergeStrategy::stream && std::filesystem::exists(intent.top, exists_error)) {
        // The top becomes the disk: first it stops naming a backing file, then it gets the base's name.
        // Until the rename the base is untouched, and after it the top's name is gone, so a re-run can tell
        // from the files which step is left.
        File top = File::open(intent.top, Access::read_write);
        lock_exclusive(top);
        if (!parse_header(read_cluster0(top), top.size(), intent.top).backing_file.empty()) {
            // backing_file_offset (8 bytes at 8) and backing_file_size (4 bytes at 16) share sector 0,
            // so one write drops both. The backing format extension stays; QEMU 7.2 ignores it then.
            const std::uint8_t fields[12] = {};
            top.write_exact(8, fields);
            top.sync_data();
        }
        fault_point("qcow2-consolidate-backing-dropped");
        std::filesystem::rename(intent.top, intent.base);
        sync_directory(std::filesystem::path(intent.base).parent_path());
        sync_directory(std::filesystem::path(intent.top).parent_path());
        log_info(intent.top + ": renamed to " + intent.base);
        fault_point("qcow2-consolidate-top-renamed");
    }

    for (const std::string& file : intent.remove_files) {
        std::error_code error;
        if (std::filesystem::exists(file, error))
            remove_file_durably(file, "qcow2-consolidate-overlay-removed");
    }
    std::error_code error;
    std::filesystem::remove(intent_path, error);
    if (error)
        throw IoError(intent_path.string() + ": removing the intent file failed: " + error.message());
    sync_directory(intent_path.parent_path());
    fault_point("qcow2-consolidate-intent-removed");
    // The links go last: a link left by a crash here names an intent that is gone, and is ignored.
    for (const std::filesystem::path& link : intent_links(intent)) {
        std::filesystem::remove(link, error);
        if (error)
            throw IoError(link.string() + ": removing the link file failed: " + error.message());
        sync_directory(link.parent_path());
    }
}

void copy_and_switch(BackingChain& chain, MergeIntent intent, const std::filesystem::path& intent_path,
                     const ConsolidateOptions& options, ConsolidateReport& report, std::vector<File>& branch_locks)
{
    // The other branches go first: they read layers that are about to change or go.
    remove_branch_images(intent, branch_locks);

    const std::vector<OverlayLayer> views = chain.views();
    const bool stream = intent.strategy == MergeStrategy::stream;
    const std::vector<GuestPiece> pieces = stream ? stream_pieces(views, chain.sizes()) : compose_chain(views, chain.sizes());
    const PieceTotals totals = piece_totals(pieces);
    report.data_bytes = totals.data_bytes;
    report.zero_bytes = totals.zero_bytes;
    const std::uint64_t total = totals.data_bytes + totals.zero_bytes;
    ChainLayer& target = stream ? chain.top() : chain.base();

    MergeProgress progress = [&](std::uint64_t done) {
        if (options.on_progress)
            options.on_progress(done, total);
        if (options.stop_requested && options.stop_requested->load())
            throw Interrupted(intent.top + ": stopped while merging into " + target.name() +
                              "; the chain still reads as before, and re-running the command resumes the merge");
    };

    PieceReader reader(views);
    if (target.format == LayerFormat::qcow2) {
        report.refcounts_lowered += clean_up_layer(target).lowered;
        Refcounts refcounts = Refcounts::load(*target.file, target.header, target.name());
        if (!stream)
            grow_base(target, &refcounts, intent.grow_base_to);
        merge_into_qcow2(*target.file, target.header, refcounts, target.name(), pieces, reader, progress);
    } else {
        grow_base(target, nullptr, intent.grow_base_to);
        merge_into_raw(*target.file, pieces, reader, progress);
    }
    fault_point("qcow2-consolidate-copied");

    // COMMIT POINT: the target (the base for commit, the top for stream) contains the top's guest view
    // durably and on its own.
    intent.phase = MergePhase::switch_files;
    write_merge_intent(intent_path, intent);
    fault_point("qcow2-consolidate-switch-recorded");

    chain = BackingChain{};  // closes the files (and drops their locks) before they are removed
    finish_switch(intent, intent_path);
}

// Rejects, on a resume in phase copy, images of other branches that the intent does not list (they
// appeared after the merge began), unless `handling` deletes them. An image that uses the top is
// rejected always. Each message names the command that finishes the merge once the cause is gone.
void check_new_branch_images(const MergeIntent& intent, const ChainLayer& top, const std::vector<BranchImage>& branches,
                             BranchHandling handling)
{
    std::string top_children;
    std::string others;
    for (const BranchImage& image : branches) {
        if (std::find(intent.branch_files.begin(), intent.branch_files.end(), image.path.string()) !=
            intent.branch_files.end())
            continue;
        std::string& list = image.backing == top.path ? top_children : others;
        list += (list.empty() ? "" : ", ") + image.description();
    }
    const std::string finish = shell_command({"vmcrypt", "consolidate-snapshots", intent.base});
    if (!top_children.empty())
        throw ResumeRefused(top.name() + ": images that use it as their backing file appeared after this merge began "
                            "and read a chain that is half merged: " + top_children + "; the merge cannot keep them, "
                            "so move them out of this folder or remove them, then run `" + finish +
                            "` to finish the merge");
    if (!others.empty() && handling != BranchHandling::delete_other_branches)
        throw ResumeRefused(top.name() + ": images that use this chain as their backing file appeared after this merge "
                            "began, and finishing it changes what they read: " + others + "; to delete them, run `" +
                            shell_command({"vmcrypt", "consolidate-snapshots", "--delete-other-branches", intent.base}) +
                            "`, or move them out of these folders and run `" + finish + "` to finish the merge");
}

ConsolidateReport resume(const std::filesystem::path& intent_path, const MergeIntent& intent,
                         const ConsolidateOptions& options)
{
    ConsolidateReport report = report_of(intent);
    report.resumed = true;
    if (options.dry_run) {
        report.dry_run = true;
        return report;
    }
    log_info(intent_path.string() + ": resuming an interrupted merge");
    write_intent_links(intent, intent_path);
    if (intent.phase == MergePhase::switch_files) {
        finish_switch(intent, intent_path);
        return report;
    }

    std::error_code error;
    if (!std::filesystem::exists(intent.top, error))
        throw InvalidInput(intent_path.string() + ": the merge is in its copy phase, but the top " + intent.top +
                           " is missing; put it back, or restore the chain from a backup");
    BackingChain chain = open_backing_chain(intent.top, Access::read_write);
    std::vector<std::string> overlays;
    for (std::size_t i = 1; i < chain.layers.size(); ++i)
        overlays.push_back(chain.layers[i].name());
    if (chain.base().name() != intent.base || overlays != intent.overlays)
        throw InvalidInput(intent_path.string() + ": the backing chain of " + intent.top +
                           " is no longer the one this interrupted merge started on; put the original files back, "
                           "or restore the chain from a backup");

    // Images of other branches: those the intent lists were confirmed for deletion by the first run. An
    // image that appeared since was not, so removing it needs --delete-other-branches on this run.
    const std::vector<BranchImage> branches = find_branch_images(chain);
    check_new_branch_images(intent, chain.top(), branches, options.branches);
    std::vector<File> branch_locks = lock_branch_images(branches, Access::read_write);
    MergeIntent updated = intent;
    for (auto it = branches.rbegin(); it != branches.rend(); ++it)
        if (std::find(updated.branch_files.begin(), updated.branch_files.end(), it->path.string()) ==
            updated.branch_files.end())
            updated.branch_files.insert(updated.branch_files.begin(), it->path.string());
    report.branch_files = updated.branch_files;
    copy_and_switch(chain, updated, intent_path, options, report, branch_locks);
    return report;
}

// An image without a backing file: delete its internal snapshots and make its refcounts exact.
ConsolidateReport clean_up_single_image(BackingChain& chain, const ConsolidateOptions& options)
{
    ChainLayer& image = chain.base();
    check_base_refcounts(image);
    ConsolidateReport report;
    report.disk = image.name();
    report.base_format = "qcow2";
    report.top = image.name();
    report.deleted_snapshots = snapshot_names(image);
    if (options.dry_run) {
        report.dry_run = true;
        return report;
    }
    report.refcounts_lowered = clean_up_layer(image).lowered;
    return report;
}

// Whether the top can take the base's place: the base is a qcow2 image (a raw base would become
// qcow2), both are files with one link on the same file system (the rename replaces the base), and
// vmcrypt can make the top's refcounts exact. Otherwise sets `reason`.
bool can_stream(const BackingChain& chain, std::string& reason)
{
    const ChainLayer& base = chain.layers.front();
    const ChainLayer& top = chain.layers.back();
    if (base.format != LayerFormat::qcow2) {
        reason = "the base is a raw file";
        return false;
    }
    struct stat base_stat {};
    struct stat top_stat {};
    if (::stat(base.path.c_str(), &base_stat) != 0 || ::stat(top.path.c_str(), &top_stat) != 0) {
        reason = "the files cannot be examined";
        return false;
    }
    if (base_stat.st_dev != top_stat.st_dev || base_stat.st_nlink != 1 || top_stat.st_nlink != 1) {
        reason = "the base and the top are on different file systems or have other hard links";
        return false;
    }
    try {
        check_base_refcounts(top);
    } catch (const Error& e) {
        reason = std::string("the top's refcounts cannot be made exact: ") + e.what();
        return false;
    }
    return true;
}

ConsolidateReport start_or_resume(const std::filesystem::path& disk, const ConsolidateOptions& options)
{
    if (auto found = find_intent(disk))
        return resume(found->first, found->second, options);
    std::error_code error;
    if (!std::filesystem::exists(disk, error)) {
        // A crash after the intent file was removed leaves the link files: that merge has finished.
        const std::filesystem::path link = merge_intent_link_path(absolute_path(disk));
        if (std::filesystem::exists(link, error) && !options.dry_run) {
            const std::filesystem::path intent_path = read_merge_intent_link(link);
            if (!std::filesystem::exists(intent_path, error)) {
                // Removes the stale links of that merge in this folder (the other overlays' too).
                std::filesystem::directory_iterator entry(link.parent_path(), error);
                for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error))
                    if (entry->path().extension() == merge_intent_link_extension &&
                        read_merge_intent_link(entry->path()) == intent_path)
                        std::filesystem::remove(entry->path(), error);
                sync_directory(link.parent_path());
                std::string base = intent_path.string();
                constexpr std::string_view suffix = ".vmcrypt-consolidate-qcow2";
                if (base.ends_with(suffix))
                    base.resize(base.size() - suffix.size());
                throw InvalidInput(disk.string() + ": file not found: a consolidate-snapshots merge of it had "
                                   "finished already, and the disk is now " + base + " (removed the link files "
                                   "it left in " + link.parent_path().string() + ")");
            }
        }
        throw InvalidInput(disk.string() + ": file not found; check the path of the disk");
    }

    BackingChain chain = open_backing_chain(disk, options.dry_run ? Access::read_only : Access::read_write);
    if (chain.layers.size() == 1)
        return clean_up_single_image(chain, options);

    ChainLayer& base = chain.base();
    ChainLayer& top = chain.top();
    if (top.size < base.size)
        throw UnsupportedInput(top.name() + ": guest size " + std::to_string(top.size) + " bytes is smaller than the "
                               "base's " + std::to_string(base.size) + " bytes, so the merged base would keep its "
                               "bytes past the top's end; copy the top instead with: qemu-img convert -O qcow2 " +
                               top.name() + " NEW.qcow2");
    const std::vector<BranchImage> branches = find_branch_images(chain);
    check_branches(top, branches, options.branches);
    std::vector<File> branch_locks =
        lock_branch_images(branches, options.dry_run ? Access::read_only : Access::read_write);
    if (base.format == LayerFormat::qcow2)
        check_base_refcounts(base);
    if (std::optional<MergeIntent> stale = read_merge_intent(merge_intent_path(base.path)))
        throw InvalidInput(merge_intent_path(base.path).string() + ": an intent file of another merge into this "
                           "base exists; run consolidate-snapshots on " + stale->top + " to finish it");

    MergeIntent intent;
    intent.base = base.name();
    intent.base_format = base.format == LayerFormat::raw ? "raw" : "qcow2";
    intent.top = top.name();
    for (std::size_t i = 1; i < chain.layers.size(); ++i)
        intent.overlays.push_back(chain.layers[i].name());
    intent.remove_files.assign(intent.overlays.rbegin(), intent.overlays.rend());
    for (auto it = branches.rbegin(); it != branches.rend(); ++it)
        intent.branch_files.push_back(it->path.string());

    // Composing the view reads and validates every overlay's tables before the first write.
    const std::vector<OverlayLayer> views = chain.views();
    PieceTotals totals = piece_totals(compose_chain(views, chain.sizes()));
    std::string reason;
    if (can_stream(chain, reason)) {
        PieceTotals streamed = piece_totals(stream_pieces(views, chain.sizes()));
        if (streamed.data_bytes < totals.data_bytes) {
            intent.strategy = MergeStrategy::stream;
            intent.remove_files.erase(intent.remove_files.begin());  // the top becomes the disk
            totals = streamed;
        }
    } else {
        log_debug(top.name() + ": merging into the base, because " + reason);
    }
    if (intent.strategy == MergeStrategy::commit && top.size > base.size) {
        if (base.format == LayerFormat::qcow2)
            check_qcow2_growable(base.header, top.size, base.name());
        intent.grow_base_to = top.size;
    }
    ConsolidateReport report = report_of(intent);
    for (const ChainLayer& layer : chain.layers)
        for (const std::string& name : snapshot_names(layer))
            report.deleted_snapshots.push_back(name);
    report.data_bytes = totals.data_bytes;
    report.zero_bytes = totals.zero_bytes;
    if (options.dry_run) {
        report.dry_run = true;
        return report;
    }

    const std::filesystem::path intent_path = merge_intent_path(base.path);
    write_merge_intent(intent_path, intent);
    write_intent_links(intent, intent_path);
    fault_point("qcow2-consolidate-intent-written");
    copy_and_switch(chain, intent, intent_path, options, report, branch_locks);
    return report;
}

}  // namespace

bool is_qcow2_consolidation(const std::filesystem::path& disk)
{
    if (has_qcow2_magic(disk))
        return true;
    std::error_code error;
    if (std::filesystem::exists(merge_intent_link_path(absolute_path(disk)), error))
        return true;  // a top or overlay outside the base's folder, renamed or removed by a merge
    try {
        return find_intent(disk).has_value();
    } catch (const Error&) {
        return false;
    }
}

std::optional<UnfinishedMerge> find_unfinished_qcow2_merge(const std::filesystem::path& disk)
{
    std::optional<FoundIntent> found = find_intent(disk);
    if (!found)
        return std::nullopt;
    const MergeIntent& intent = found->second;
    return UnfinishedMerge{found->first, intent.phase == MergePhase::copy ? "copy" : "switch",
                           intent.strategy == MergeStrategy::commit ? "commit" : "stream", intent.base, intent.top};
}

ConsolidateReport consolidate_qcow2(const std::filesystem::path& disk, const ConsolidateOptions& options)
{
    try {
        return start_or_resume(disk, options);
    } catch (const Interrupted&) {
        throw;
    } catch (const ResumeRefused&) {
        throw;
    } catch (const Error& e) {
        // "Recovery needed": once an intent file exists the chain is mid-merge but consistent. Failures
        // before it changed nothing and keep their message.
        std::optional<FoundIntent> found;
        try {
            found = find_intent(disk);
        } catch (const Error&) {
            throw e;
        }
        if (!found || options.dry_run)
            throw;
        throw Error(e.code(), std::string(e.what()) + "; the merge is unfinished but nothing is lost: fix the cause "
                              "and run `" + shell_command({"vmcrypt", "consolidate-snapshots", found->second.base}) +
                                  "` to resume");
    }
}

}  // namespace vmcrypt::qcow2
