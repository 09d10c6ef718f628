// consolidate-snapshots: merge a VMDK snapshot chain into its base, and report which file is the disk now.

#include "core/log.hpp"
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

int run_qcow2_consolidate(const GlobalOptions& global, const ConsolidateCommandOptions& options)
{
    qcow2::ConsolidateOptions consolidate;
    consolidate.branches = options.delete_other_branches ? qcow2::BranchHandling::delete_other_branches
                                                         : qcow2::BranchHandling::reject;
    consolidate.dry_run = options.dry_run;
    ProgressReporter reporter(options.dry_run ? ProgressMode::none : progress_mode(global), options.disk);
    consolidate.on_progress = [&reporter](std::uint64_t done, std::uint64_t total) {
        reporter.update(Progress{done, total});
    };
    install_stop_handlers();
    consolidate.stop_requested = &stop_flag();

    auto started = std::chrono::steady_clock::now();
    log_info("consolidate-snapshots " + options.disk + ": starting (qcow2)");
    qcow2::ConsolidateReport report = qcow2::consolidate_qcow2(options.disk, consolidate);
    reporter.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    if (global.json) {
        nlohmann::json result = {{"schema", "vmcrypt-consolidate/1"},
                                 {"command", "consolidate-snapshots"},
                                 {"format", "qcow2"},
                                 {"dryRun", report.dry_run},
                                 {"strategy", report.strategy},
                                 {"resumed", report.resumed},
                                 {"disk", report.disk},
                                 {"baseFormat", report.base_format},
                                 {"top", report.top},
                                 {"merged", report.merged},
                                 {"removedFiles", report.removed_files},
                                 {"removedBranchFiles", report.branch_files},
                                 {"deletedSnapshots", report.deleted_snapshots},
                                 {"growBaseTo", report.grow_base_to},
                                 {"bytesToCopy", report.data_bytes},
                                 {"zeroBytes", report.zero_bytes},
                                 {"refcountsLowered", report.refcounts_lowered},
                                 {"seconds", seconds}};
        std::printf("%s\n", result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
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
        if (report.strategy == "stream")
            std::printf("  strategy: stream (copy the data below the top into the top, then rename the top to "
                        "the base's name)\n");
        else if (!report.merged.empty())
            std::printf("  strategy: commit (copy the overlays' data into the base)\n");
        if (!report.resumed && !report.merged.empty())
            std::printf("  bytes to copy: %s (%llu bytes), zeroed: %s\n", format_bytes(report.data_bytes).c_str(),
                        static_cast<unsigned long long>(report.data_bytes), format_bytes(report.zero_bytes).c_str());
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

    vmdk::ConsolidateOptions consolidate;
    consolidate.branches = options.delete_other_branches ? vmdk::BranchPolicy::delete_other_branches
                                                         : vmdk::BranchPolicy::reject;
    consolidate.dry_run = options.dry_run;

    ProgressReporter reporter(options.dry_run ? ProgressMode::none : progress_mode(global), options.disk);
    consolidate.on_progress = [&reporter](std::uint64_t done, std::uint64_t total) {
        reporter.update(Progress{done, total});
    };
    install_stop_handlers();
    consolidate.stop_requested = &stop_flag();

    auto started = std::chrono::steady_clock::now();
    log_info("consolidate-snapshots " + options.disk + ": starting");
    vmdk::ConsolidateReport report = vmdk::consolidate_snapshots(options.disk, consolidate);
    reporter.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    if (global.json) {
        nlohmann::json result = {{"schema", "vmcrypt-consolidate/1"},
                                 {"command", "consolidate-snapshots"},
                                 {"dryRun", report.dry_run},
                                 {"strategy", report.strategy},
                                 {"resumed", report.resumed},
                                 {"disk", report.disk},
                                 {"top", report.top},
                                 {"merged", report.merged},
                                 {"removedFiles", report.removed_files},
                                 {"removedBranchFiles", report.branch_files},
                                 {"vmxFiles", report.vmx_files},
                                 {"vmsdFiles", report.vmsd_files},
                                 {"bytesToCopy", report.data_bytes},
                                 {"zeroBytes", report.zero_bytes},
                                 {"maxBytesAppended", report.appended_bytes},
                                 {"oldCid", report.old_cid},
                                 {"newCid", report.new_cid},
                                 {"seconds", seconds}};
        std::printf("%s\n", result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        return 0;
    }
    if (global.quiet)
        return 0;

    if (report.dry_run) {
        std::printf("%s: would merge %zu snapshot%s into %s%s\n", report.top.c_str(), report.merged.size(),
                    report.merged.size() == 1 ? "" : "s", report.disk.c_str(),
                    report.resumed ? " (finishing an interrupted merge)" : "");
        if (report.strategy == "stream")
            std::printf("  strategy: stream (copy the data below the top into the top, then rename the top to "
                        "the base's name)\n");
        else
            std::printf("  strategy: commit (copy the snapshots' data into the base)\n");
        if (!report.resumed)
            std::printf("  bytes to copy: %s (%llu bytes), zeroed: %s\n", format_bytes(report.data_bytes).c_str(),
                        static_cast<unsigned long long>(report.data_bytes), format_bytes(report.zero_bytes).c_str());
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
