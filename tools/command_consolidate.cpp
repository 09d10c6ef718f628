// consolidate-snapshots: merge a VMDK snapshot chain or a qcow2 backing chain into its base (and delete a qcow2
// image's internal snapshots), and report which file is the disk now.

#include "core/log.hpp"
#include "formats/open_disk.hpp"
#include "formats/qcow2/consolidate.hpp"
#include "formats/vmdk/consolidate.hpp"
#include "tools/commands.hpp"
#include "tools/progress_reporter.hpp"
#include "tools/stop_signals.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>

namespace vmcrypt::cli {

namespace {

void print_list(const char* title, const std::vector<std::string>& items)
{
    if (items.empty())
        return;
    std::printf("  %s:\n", title);
    for (const std::string& item : items)
        std::printf("    %s\n", item.c_str());
}

// Runs `merge(consolidate)` with the progress line and the stop signals set up. Returns its report and
// the seconds it took.
template <typename Options, typename Merge>
auto run_merge(const GlobalOptions& global, const ConsolidateCommandOptions& command, Options& consolidate,
               const Merge& merge)
{
    consolidate.dry_run = command.dry_run;
    ProgressReporter reporter(command.dry_run ? ProgressMode::none : progress_mode(global), command.disk);
    consolidate.on_progress = [&reporter](std::uint64_t done, std::uint64_t total) {
        reporter.update(Progress{done, total});
    };
    install_stop_handlers();
    consolidate.stop_requested = &stop_flag();

    auto started = std::chrono::steady_clock::now();
    auto report = merge(consolidate);
    reporter.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return std::pair{std::move(report), seconds};
}

// The --json fields that VMDK and qcow2 reports share.
template <typename Report>
nlohmann::json common_json(const Report& report, double seconds)
{
    return {{"schema", "vmcrypt-consolidate/1"},
            {"command", "consolidate-snapshots"},
            {"dryRun", report.dry_run},
            {"strategy", report.strategy},
            {"resumed", report.resumed},
            {"disk", report.disk},
            {"top", report.top},
            {"merged", report.merged},
            {"removedFiles", report.removed_files},
            {"removedBranchFiles", report.branch_files},
            {"bytesToCopy", report.data_bytes},
            {"zeroBytes", report.zero_bytes},
            {"seconds", seconds}};
}

void print_json(const nlohmann::json& result)
{
    std::printf("%s\n", result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

// The --dry-run lines on the strategy and the bytes to copy. `layers` names what is merged
// ("snapshots" for VMDK, "overlays" for qcow2).
template <typename Report>
void print_plan(const Report& report, const char* layers)
{
    if (report.strategy == "stream")
        std::printf("  strategy: stream (copy the data below the top into the top, then rename the top to "
                    "the base's name)\n");
    else if (!report.merged.empty())
        std::printf("  strategy: commit (copy the %s' data into the base)\n", layers);
    if (!report.resumed && !report.merged.empty())
        std::printf("  bytes to copy: %s (%llu bytes), zeroed: %s\n", format_bytes(report.data_bytes).c_str(),
                    static_cast<unsigned long long>(report.data_bytes), format_bytes(report.zero_bytes).c_str());
}

int run_qcow2_consolidate(const GlobalOptions& global, const ConsolidateCommandOptions& options)
{
    qcow2::ConsolidateOptions consolidate;
    consolidate.branches = options.delete_other_branches ? qcow2::BranchHandling::delete_other_branches
                                                         : qcow2::BranchHandling::reject;
    log_info("consolidate-snapshots " + options.disk + ": starting (qcow2)");
    auto [report, seconds] = run_merge(global, options, consolidate, [&](qcow2::ConsolidateOptions& merge_options) {
        return qcow2::consolidate_qcow2(options.disk, merge_options);
    });

    if (global.json) {
        nlohmann::json result = common_json(report, seconds);
        result["format"] = "qcow2";
        result["baseFormat"] = report.base_format;
        result["deletedSnapshots"] = report.deleted_snapshots;
        result["growBaseTo"] = report.grow_base_to;
        result["refcountsLowered"] = report.refcounts_lowered;
        print_json(result);
        return 0;
    }
    if (global.quiet)
        return 0;

    if (report.dry_run) {
        if (report.merged.empty())
            std::printf("%s: would delete %zu internal snapshot%s and make the refcounts exact\n", report.disk.c_str(),
                        report.deleted_snapshots.size(), report.deleted_snapshots.size() == 1 ? "" : "s");
        else
            std::printf("%s: would merge %zu overlay%s into %s (%s)%s\n", report.top.c_str(), report.merged.size(),
                        report.merged.size() == 1 ? "" : "s", report.disk.c_str(), report.base_format.c_str(),
                        report.resumed ? " (finishing an interrupted merge)" : "");
        print_plan(report, "overlays");
        if (report.grow_base_to != 0)
            std::printf("  grow the base to the top's guest size: %s (%llu bytes)\n",
                        format_bytes(report.grow_base_to).c_str(), static_cast<unsigned long long>(report.grow_base_to));
        print_list("overlays merged, newest first", report.merged);
        print_list("files to remove", report.removed_files);
        print_list("files of other branches to remove", report.branch_files);
        print_list("internal snapshots to delete", report.deleted_snapshots);
        return 0;
    }
    if (report.merged.empty())
        std::printf("%s: the disk is now %s (%zu internal snapshot%s deleted, %llu cluster refcount%s lowered)\n",
                    report.top.c_str(), report.disk.c_str(), report.deleted_snapshots.size(),
                    report.deleted_snapshots.size() == 1 ? "" : "s",
                    static_cast<unsigned long long>(report.refcounts_lowered), report.refcounts_lowered == 1 ? "" : "s");
    else
        std::printf("%s: the disk is now %s (%zu overlay%s merged%s%s)\n", report.top.c_str(), report.disk.c_str(),
                    report.merged.size(), report.merged.size() == 1 ? "" : "s",
                    report.strategy == "stream" ? " by streaming into the top, renamed to the base's name" : "",
                    report.resumed ? ", resumed" : "");
    if (report.grow_base_to != 0)
        std::printf("  base grown to %llu bytes\n", static_cast<unsigned long long>(report.grow_base_to));
    print_list("removed", report.removed_files);
    print_list("removed from other branches", report.branch_files);
    print_list("internal snapshots deleted", report.deleted_snapshots);
    return 0;
}

}  // namespace

int run_consolidate(const GlobalOptions& global, const ConsolidateCommandOptions& options)
{
    if (qcow2::is_qcow2_consolidation(options.disk))
        return run_qcow2_consolidate(global, options);
    // A missing top is left to the merge, which may find an interrupted merge's intent file for it.
    std::error_code error;
    if (std::filesystem::is_regular_file(options.disk, error))
        check_disk_file(options.disk);

    vmdk::ConsolidateOptions consolidate;
    consolidate.branches = options.delete_other_branches ? vmdk::BranchPolicy::delete_other_branches
                                                         : vmdk::BranchPolicy::reject;
    log_info("consolidate-snapshots " + options.disk + ": starting");
    auto [report, seconds] = run_merge(global, options, consolidate, [&](vmdk::ConsolidateOptions& merge_options) {
        return vmdk::consolidate_snapshots(options.disk, merge_options);
    });

    if (global.json) {
        nlohmann::json result = common_json(report, seconds);
        result["vmxFiles"] = report.vmx_files;
        result["vmsdFiles"] = report.vmsd_files;
        result["maxBytesAppended"] = report.appended_bytes;
        result["oldCid"] = report.old_cid;
        result["newCid"] = report.new_cid;
        print_json(result);
        return 0;
    }
    if (global.quiet)
        return 0;

    if (report.dry_run) {
        std::printf("%s: would merge %zu snapshot%s into %s%s\n", report.top.c_str(), report.merged.size(),
                    report.merged.size() == 1 ? "" : "s", report.disk.c_str(),
                    report.resumed ? " (finishing an interrupted merge)" : "");
        print_plan(report, "snapshots");
        print_list("snapshots merged, newest first", report.merged);
        print_list("files to remove", report.removed_files);
        print_list("files of other branches to remove", report.branch_files);
        print_list(".vmx files to repoint", report.vmx_files);
        print_list(".vmsd snapshot lists to empty", report.vmsd_files);
        return 0;
    }
    std::printf("%s: the disk is now %s (%zu snapshot%s merged%s%s)\n", report.top.c_str(), report.disk.c_str(),
                report.merged.size(), report.merged.size() == 1 ? "" : "s",
                report.strategy == "stream" ? " by streaming into the top, renamed to the base's name" : "",
                report.resumed ? ", resumed" : "");
    print_list("removed", report.removed_files);
    print_list("removed from other branches", report.branch_files);
    print_list("repointed to the base", report.vmx_files);
    return 0;
}

}  // namespace vmcrypt::cli
