// consolidate-snapshots: planning, the copy phase, the switch and resuming after a crash.

#include "formats/vmdk/consolidate.hpp"

#include "core/crypto/random.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/free_space.hpp"
#include "core/io/locks.hpp"
#include "core/log.hpp"
#include "core/text/shell_words.hpp"
#include "formats/vmdk/base_writer.hpp"
#include "formats/vmdk/consolidate_intent.hpp"
#include "formats/vmdk/merge_stream.hpp"
#include "formats/vmdk/vmx_file.hpp"

#include <algorithm>
#include <set>

namespace vmcrypt::vmdk {

namespace {

// Made absolute before weakly_canonical(), which leaves a relative path relative when its first
// component does not exist (a bare file name of a removed delta).
std::filesystem::path absolute_path(const std::filesystem::path& path)
{
    std::filesystem::path absolute = std::filesystem::absolute(path).lexically_normal();
    std::error_code error;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, error);
    return error ? absolute : canonical;
}

// An estimate of the intent file's size: JSON with the chain's file names, a few KiB in practice.
constexpr std::uint64_t intent_file_bound = 64 << 10;

std::filesystem::path folder_of(const std::filesystem::path& path)
{
    std::filesystem::path folder = path.parent_path();
    return folder.empty() ? std::filesystem::path(".") : folder;
}

// A new CID with as many hex digits as the old one, so that the descriptor keeps its length and the
// in-place write changes only those digits. Never the old CID, ffffffff (no parent) or fffffffe
// (qemu's "CID not yet written").
std::uint32_t new_content_id(std::uint32_t old_cid, std::size_t digits)
{
    std::uint64_t limit = digits >= 8 ? 0x100000000ull : (1ull << (4 * digits));
    for (;;) {
        SecureBytes bytes = random_bytes(4);
        std::uint32_t cid = static_cast<std::uint32_t>(bytes[0]) | static_cast<std::uint32_t>(bytes[1]) << 8 |
                            static_cast<std::uint32_t>(bytes[2]) << 16 | static_cast<std::uint32_t>(bytes[3]) << 24;
        cid = static_cast<std::uint32_t>(cid % limit);
        if (cid != old_cid && cid != 0xffffffff && cid != 0xfffffffe)
            return cid;
    }
}

}  // namespace

Descriptor descriptor_with_cid(const Descriptor& descriptor, const std::string& cid)
{
    Descriptor updated = descriptor;
    std::optional<std::string> old_cid = updated.value("CID");
    std::string written = cid;
    if (old_cid && old_cid->size() < written.size())
        written = written.substr(written.size() - old_cid->size());
    updated.replace_value("CID", written);
    if (std::optional<std::string> long_id = updated.value("ddb.longContentID"); long_id && long_id->size() == 32)
        updated.replace_value("ddb.longContentID", long_id->substr(0, 24) + cid);
    return updated;
}

namespace {

// The base descriptor with `cid` (see descriptor_with_cid()), as a metadata write of the whole
// descriptor area or file.
MetadataWrite cid_update(VmdkDisk& base, const std::string& cid)
{
    std::string old_text = base.descriptor().serialize();
    Descriptor updated = descriptor_with_cid(base.descriptor(), cid);

    MetadataWrite write;
    write.file_index = 0;
    std::string bytes = updated.serialize();
    if (bytes.size() != old_text.size())
        throw Error(ExitCode::failure, base.descriptor().file_name() + ": the new CID changed the descriptor's length");
    write.bytes.assign(bytes.begin(), bytes.end());
    bool embedded = base.files().size() == 1 && base.descriptor().extents().size() == 1 &&
                    base.descriptor().extents()[0].type == "SPARSE" && base.subformat() == "monolithicSparse";
    if (embedded) {
        // The area of the embedded descriptor: VmdkDisk::apply() checks that the write covers it exactly.
        File& file = *base.files()[0];
        std::vector<std::uint8_t> header(512);
        header.resize(file.read_at(0, header));
        std::uint64_t offset = 0;
        for (int i = 7; i >= 0; --i)
            offset = offset << 8 | header[28 + static_cast<std::size_t>(i)];
        write.offset = offset * 512;
    } else {
        write.offset = 0;
        write.truncate_to = bytes.size();
    }
    return write;
}

std::vector<std::string> file_paths(ChainMember& member)
{
    std::vector<std::string> paths;
    for (File* file : member.files())
        paths.push_back(absolute_path(file->path()).string());
    return paths;
}

void remove_file_durably(const std::string& path, const char* fault_name)
{
    std::error_code error;
    if (!std::filesystem::remove(path, error) && error)
        throw IoError(path + ": removing the file failed: " + error.message());
    sync_directory(folder_of(path));
    fault_point(fault_name);
}

// Reads the intent file next to `base` when it names `disk`.
std::optional<std::pair<std::filesystem::path, ConsolidateIntent>> intent_naming(const std::filesystem::path& base,
                                                                                 const std::filesystem::path& disk)
{
    std::filesystem::path path = consolidate_intent_path(absolute_path(base));
    std::optional<ConsolidateIntent> intent = read_consolidate_intent(path);
    if (intent && intent->mentions(absolute_path(disk)))
        return std::make_pair(path, *intent);
    return std::nullopt;
}

// Follows parentFileNameHint up from `disk` and returns the intent file next to a parent that names
// `disk`. Nothing is validated on the way: after the commit point the base has a new CID, so the
// links no longer check.
std::optional<std::pair<std::filesystem::path, ConsolidateIntent>> intent_of_parents(const std::filesystem::path& disk)
{
    std::filesystem::path current = disk;
    for (std::size_t depth = 0; depth < max_chain_depth; ++depth) {
        std::optional<std::filesystem::path> parent = parent_path_of(current);
        if (!parent)
            return std::nullopt;
        if (auto found = intent_naming(*parent, disk))
            return found;
        current = *parent;
    }
    return std::nullopt;
}

// Finds the intent of an unfinished merge that `disk` belongs to: next to the disk if it is the base,
// in the disk's folder, or next to a parent of the disk, which may be in another folder. A removed
// delta is found through the other disks left in its folder.
std::optional<std::pair<std::filesystem::path, ConsolidateIntent>> find_intent(const std::filesystem::path& disk)
{
    std::filesystem::path own = consolidate_intent_path(absolute_path(disk));
    if (std::optional<ConsolidateIntent> intent = read_consolidate_intent(own))
        return std::make_pair(own, *intent);

    std::filesystem::path folder = folder_of(absolute_path(disk));
    std::vector<std::filesystem::path> folder_disks;
    std::error_code error;
    std::filesystem::directory_iterator entry(folder, error);
    for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
        std::filesystem::path candidate = entry->path();
        if (candidate.extension() == ".vmdk") {
            folder_disks.push_back(candidate);
            continue;
        }
        if (candidate.extension() != ".vmcrypt-consolidate")
            continue;
        std::optional<ConsolidateIntent> intent = read_consolidate_intent(candidate);
        if (intent && intent->mentions(absolute_path(disk)))
            return std::make_pair(candidate, *intent);
    }

    std::error_code exists_error;
    if (std::filesystem::exists(disk, exists_error))
        return intent_of_parents(disk);
    std::sort(folder_disks.begin(), folder_disks.end());
    for (const std::filesystem::path& folder_disk : folder_disks) {
        std::filesystem::path current = folder_disk;
        for (std::size_t depth = 0; depth < max_chain_depth; ++depth) {
            std::optional<std::filesystem::path> parent = parent_path_of(current);
            if (!parent)
                break;
            if (auto found = intent_naming(*parent, disk))
                return found;
            current = *parent;
        }
    }
    return std::nullopt;
}

ConsolidateReport report_of(const ConsolidateIntent& intent)
{
    ConsolidateReport report;
    report.strategy = intent.strategy == MergeStrategy::commit ? "commit" : "stream";
    report.disk = intent.base;
    report.top = intent.top;
    report.merged.assign(intent.deltas.rbegin(), intent.deltas.rend());
    report.removed_files = intent.remove_files;
    report.branch_files = intent.branch_files;
    report.vmx_files = intent.vmx_files;
    for (const std::string& vmx : intent.vmx_files)
        report.vmsd_files.push_back(vmsd_path_of(vmx).string());
    report.old_cid = intent.old_cid;
    report.new_cid = intent.new_cid;
    return report;
}

// Returns the .vmx files next to the top that name it, to repoint. Rejects a .vmx that names any
// other file about to be removed, because the VM it configures would lose its disk.
std::vector<std::string> plan_vmx_updates(const SnapshotChain& chain, const std::set<std::string>& removed,
                                          const std::filesystem::path& top)
{
    std::set<std::filesystem::path> folders;
    for (const auto& member : chain.members)
        folders.insert(absolute_path(folder_of(member->path())));
    for (const auto& member : chain.branches)
        folders.insert(absolute_path(folder_of(member->path())));
    std::filesystem::path top_folder = absolute_path(folder_of(top));

    std::set<std::string> vmx_files;
    for (const std::filesystem::path& folder : folders) {
        for (const VmxDiskReference& reference : find_vmx_disk_references(folder)) {
            if (names_disk(reference, top)) {
                if (absolute_path(folder_of(reference.vmx)) == top_folder) {
                    if (auto lock_folder = find_vmware_lock(reference.vmx))
                        throw DiskInUse(reference.vmx.string() + ": VMware lock folder " + lock_folder->string() +
                                        " exists, so the VM is running; power it off and retry");
                    vmx_files.insert(absolute_path(reference.vmx).string());
                }
                continue;
            }
            std::string named = absolute_path(reference.resolved).string();
            if (removed.count(named))
                throw WrongDiskState(reference.vmx.string() + ": " + reference.key + " names " + reference.value +
                                     ", a snapshot that consolidating " + top.string() +
                                     " would remove, so that VM would lose its disk; name the snapshot that VM uses, "
                                     "or change the .vmx first");
        }
    }
    return {vmx_files.begin(), vmx_files.end()};
}

}  // namespace

std::filesystem::path consolidate_intent_path(const std::filesystem::path& base)
{
    std::filesystem::path path = base;
    path += ".vmcrypt-consolidate";
    return path;
}

namespace {

// After the commit point: new base CID, .vmx and .vmsd, removal of the merged deltas and the intent.
// Every step checks what is done already, so a re-run after a crash anywhere here finishes the job.
void finish_switch(const ConsolidateIntent& intent, const std::filesystem::path& intent_path)
{
    std::error_code exists_error;
    if (intent.strategy == MergeStrategy::commit) {
        std::unique_ptr<ChainMember> base = ChainMember::open(intent.base, Access::read_write);
        VmdkDisk* disk = base->disk();
        if (!disk)
            throw InvalidInput(intent.base + ": the base named by " + intent_path.string() + " is not a base disk");
        std::optional<std::uint32_t> cid = disk->descriptor().cid();
        if (!cid || format_content_id(*cid) != intent.new_cid) {
            disk->apply(cid_update(*disk, intent.new_cid));
            log_info(intent.base + ": CID set to " + intent.new_cid);
        }
        fault_point("consolidate-cid-written");
    } else if (std::filesystem::exists(intent.top, exists_error)) {
        // The top becomes the disk: it gets the base's descriptor with the new CID, then the base's name.
        // Until the rename the base is untouched, and after it the top's name is gone, so a re-run sees
        // from the files which of the two steps is left.
        write_descriptor_area(intent.top, intent.top_descriptor);
        fault_point("consolidate-cid-written");
        std::filesystem::rename(intent.top, intent.base);
        sync_directory(folder_of(intent.base));
        sync_directory(folder_of(intent.top));
        log_info(intent.top + ": renamed to " + intent.base + ", which now has CID " + intent.new_cid);
        fault_point("consolidate-top-renamed");
    }

    for (const std::string& vmx : intent.vmx_files) {
        std::error_code error;
        if (!std::filesystem::exists(vmx, error))
            continue;
        if (repoint_vmx_disk(vmx, intent.top, intent.base))
            log_info(vmx + ": now names " + intent.base);
        std::filesystem::path vmsd = vmsd_path_of(vmx);
        if (empty_snapshot_list(vmsd))
            log_info(vmsd.string() + ": snapshot list emptied");
    }
    fault_point("consolidate-vmx-updated");

    // Newest first, so that an interrupted removal never leaves a delta whose parent is gone while it
    // is still there.
    std::vector<std::string> files = intent.remove_files;
    for (const std::string& file : files)
        remove_file_durably(file, "consolidate-delta-file-removed");

    std::error_code error;
    std::filesystem::remove(intent_path, error);
    if (error)
        throw IoError(intent_path.string() + ": removing the intent file failed: " + error.message());
    sync_directory(folder_of(intent_path));
}

void copy_and_switch(SnapshotChain& chain, ConsolidateIntent intent, const std::filesystem::path& intent_path,
                     const ConsolidateOptions& options, bool resumed)
{
    // Other branches go first: they read the base, which is about to change.
    for (const std::string& file : intent.branch_files) {
        std::error_code error;
        if (std::filesystem::exists(file, error))
            remove_file_durably(file, "consolidate-branch-file-removed");
    }
    chain.branches.clear();

    bool stream = intent.strategy == MergeStrategy::stream;
    std::vector<GuestRun> runs = stream ? stream_runs(chain) : commit_runs(chain);
    VmdkDisk* target = stream ? chain.members.back()->disk() : chain.members.front()->disk();
    if (!target)
        throw Error(ExitCode::failure, intent.base + ": the merge target is not a hosted disk");

    BaseWriter writer(*target);
    if (resumed)
        for (const auto& [file, size] : intent.sparse_file_sizes)
            if (std::uint64_t trimmed = writer.trim_unreferenced_grains(file, size))
                log_info(file + ": removed " + std::to_string(trimmed) + " bytes of grains an interrupted run appended");
    BaseWriteEstimate estimate = writer.check(runs);

    std::uint64_t total = estimate.data_bytes + estimate.zero_bytes;
    std::uint64_t done = 0;
    writer.write(runs, [&](const GuestRun& run) {
        done += run.length;
        if (options.on_progress)
            options.on_progress(done, total);
        fault_point("consolidate-run-copied");
        if (options.stop_requested && options.stop_requested->load())
            throw Interrupted(intent.top + ": stopped while merging into " + (stream ? intent.top : intent.base) +
                              "; the chain still reads as before, and re-running the command resumes the merge");
    });
    fault_point("consolidate-copied");

    // COMMIT POINT: the target (the base for commit, the top for stream) contains the current state
    // durably and on its own. From here a re-run finishes the switch.
    intent.phase = ConsolidatePhase::switch_metadata;
    write_consolidate_intent(intent_path, intent);
    fault_point("consolidate-switch-recorded");

    chain = SnapshotChain{};  // closes the files before the switch reopens what it changes
    finish_switch(intent, intent_path);
}

ConsolidateReport resume(const std::filesystem::path& intent_path, ConsolidateIntent intent,
                         const ConsolidateOptions& options)
{
    ConsolidateReport report = report_of(intent);
    report.resumed = true;
    if (options.dry_run) {
        report.dry_run = true;
        return report;
    }
    log_info(intent_path.string() + ": resuming an interrupted merge");

    if (intent.phase == ConsolidatePhase::switch_metadata) {
        finish_switch(intent, intent_path);
        return report;
    }

    BranchPolicy policy = intent.branch_files.empty() ? options.branches : BranchPolicy::delete_other_branches;
    SnapshotChain chain = open_snapshot_chain(intent.top, Access::read_write, policy);
    std::vector<std::string> deltas;
    for (std::size_t i = 1; i < chain.members.size(); ++i)
        deltas.push_back(absolute_path(chain.members[i]->path()).string());
    std::optional<std::uint32_t> cid = chain.members.front()->descriptor().cid();
    bool same = absolute_path(chain.members.front()->path()).string() == intent.base && deltas == intent.deltas &&
                cid && format_content_id(*cid) == intent.old_cid;
    if (!same)
        throw InvalidInput(intent_path.string() + ": the snapshot chain of " + intent.top +
                           " is no longer the one this interrupted merge started on (other files or another base "
                           "CID); put the original files back, or restore the chain from a backup");
    for (const auto& member : chain.branches)
        for (const std::string& file : file_paths(*member))
            if (std::find(intent.branch_files.begin(), intent.branch_files.end(), file) == intent.branch_files.end())
                intent.branch_files.push_back(file);

    copy_and_switch(chain, intent, intent_path, options, true);
    return report;
}

}  // namespace

namespace {

ConsolidateReport start_or_resume(const std::filesystem::path& disk, const ConsolidateOptions& options);

}  // namespace

ConsolidateReport consolidate_snapshots(const std::filesystem::path& disk, const ConsolidateOptions& options)
{
    try {
        return start_or_resume(disk, options);
    } catch (const Interrupted&) {
        throw;
    } catch (const Error& e) {
        // "Recovery needed": once an intent file exists the chain is mid-merge but consistent. Failures
        // before it changed nothing and keep their message.
        std::optional<std::pair<std::filesystem::path, ConsolidateIntent>> found;
        try {
            found = find_intent(disk);
        } catch (const Error&) {
            throw e;
        }
        if (!found || options.dry_run)
            throw;
        throw Error(e.code(), std::string(e.what()) + "; the merge is unfinished but nothing is lost: fix the "
                              "cause and run `" + shell_command({"vmcrypt", "consolidate-snapshots", found->second.base}) +
                                  "` to resume");
    }
}

namespace {

ConsolidateReport start_or_resume(const std::filesystem::path& disk, const ConsolidateOptions& options)
{
    if (auto found = find_intent(disk))
        return resume(found->first, found->second, options);
    std::error_code error;
    if (!std::filesystem::exists(disk, error))
        throw InvalidInput(disk.string() + ": file not found; check the path of the disk");

    Access access = options.dry_run ? Access::read_only : Access::read_write;
    SnapshotChain chain = open_snapshot_chain(disk, access, options.branches);
    ChainMember& base_member = *chain.members.front();
    ChainMember& top_member = *chain.members.back();
    std::filesystem::path base_path = absolute_path(base_member.path());
    std::filesystem::path intent_path = consolidate_intent_path(base_path);
    if (auto intent = read_consolidate_intent(intent_path)) {
        chain = SnapshotChain{};
        return resume(intent_path, *intent, options);
    }

    VmdkDisk* base = base_member.disk();
    if (!base)
        throw UnsupportedInput(base_member.name() + ": the base of the chain is an ESXi delta without a parent; "
                                                    "restore its parent disk");

    ConsolidateIntent intent;
    intent.base = base_path.string();
    intent.top = absolute_path(top_member.path()).string();
    for (std::size_t i = 1; i < chain.members.size(); ++i)
        intent.deltas.push_back(absolute_path(chain.members[i]->path()).string());
    for (std::size_t i = chain.members.size() - 1; i >= 1; --i)
        for (const std::string& file : file_paths(*chain.members[i]))
            intent.remove_files.push_back(file);
    for (const auto& member : chain.branches)
        for (const std::string& file : file_paths(*member))
            intent.branch_files.push_back(file);
    std::set<std::string> removed(intent.remove_files.begin(), intent.remove_files.end());
    removed.insert(intent.branch_files.begin(), intent.branch_files.end());
    removed.erase(intent.top);
    intent.vmx_files = plan_vmx_updates(chain, removed, intent.top);

    std::optional<std::uint32_t> old_cid = base->descriptor().cid();
    if (!old_cid)
        throw InvalidInput(base_member.name() + ": CID: missing in the base's descriptor; add a CID line");
    intent.old_cid = format_content_id(*old_cid);
    std::size_t digits = base->descriptor().value("CID")->size();
    intent.new_cid = format_content_id(new_content_id(*old_cid, digits));
    cid_update(*base, intent.new_cid);  // throws now if the descriptor cannot take it

    // Stream when it copies less: then the top is the target and its own files are kept.
    std::vector<GuestRun> runs = commit_runs(chain);
    std::string stream_reason;
    if (auto area = stream_descriptor_area(chain, intent.new_cid, stream_reason)) {
        std::vector<GuestRun> streamed = stream_runs(chain);
        if (data_bytes_of(streamed) < data_bytes_of(runs)) {
            intent.strategy = MergeStrategy::stream;
            intent.top_descriptor = std::move(*area);
            runs = std::move(streamed);
            std::vector<std::string> top_files = file_paths(top_member);
            std::erase_if(intent.remove_files, [&](const std::string& file) {
                return std::find(top_files.begin(), top_files.end(), file) != top_files.end();
            });
        }
    } else {
        log_debug(intent.top + ": merging into the base, because " + stream_reason);
    }
    VmdkDisk* target = intent.strategy == MergeStrategy::stream ? top_member.disk() : base;
    BaseWriter writer(*target);
    BaseWriteEstimate estimate = writer.check(runs);
    intent.sparse_file_sizes = writer.sparse_file_sizes();

    ConsolidateReport report = report_of(intent);
    report.data_bytes = estimate.data_bytes;
    report.zero_bytes = estimate.zero_bytes;
    report.appended_bytes = estimate.appended_bytes;
    if (options.dry_run) {
        report.dry_run = true;
        return report;
    }

    std::vector<SpaceDemand> demands{{intent_path, intent_file_bound, "the intent file"}};
    for (const auto& [file, bytes] : estimate.allocated_bytes)
        demands.push_back({file, bytes, "data copied into " + file.filename().string()});
    check_free_space(demands, top_member.name(), "merge");

    write_consolidate_intent(intent_path, intent);
    fault_point("consolidate-intent-written");
    copy_and_switch(chain, intent, intent_path, options, false);
    return report;
}

}  // namespace

}  // namespace vmcrypt::vmdk
