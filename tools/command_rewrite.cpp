// encrypt and decrypt: key sources from the options, progress, and the result summary.

#include "core/engine/resume_hint.hpp"
#include "core/engine/operation.hpp"
#include "core/log.hpp"
#include "formats/open_disk.hpp"
#include "tools/commands.hpp"
#include "tools/key_sources.hpp"
#include "tools/progress_reporter.hpp"
#include "tools/stop_signals.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <unistd.h>

namespace vmcrypt::cli {

ProgressMode progress_mode(const GlobalOptions& global)
{
    if (global.progress == "json")
        return ProgressMode::json;
    if (global.progress == "bar")
        return ProgressMode::bar;
    if (global.progress == "none" || global.quiet || global.json)
        return ProgressMode::none;
    return ::isatty(STDERR_FILENO) ? ProgressMode::bar : ProgressMode::none;
}

namespace {

int run_rewrite(Operation operation, const GlobalOptions& global, const RewriteCommandOptions& options)
{
    KeySources sources = make_key_sources(options.keys, operation);
    set_resume_key_arguments(operation, resume_key_arguments(options.keys));
    install_stop_handlers();

    ProgressReporter reporter(progress_mode(global), options.disk);
    RewriteOptions rewrite;
    rewrite.window_size = options.window_mib.value_or(0) << 20;
    rewrite.data_check = options.skip_data_check ? DataCheckMode::skip : DataCheckMode::enforce;
    rewrite.stop_requested = &stop_flag();
    rewrite.on_progress = [&reporter](const Progress& p) { reporter.update(p); };

    auto started = std::chrono::steady_clock::now();
    log_info(to_string(operation) + " " + options.disk + ": starting");
    OperationReport report = run_operation(operation, options.disk, sources, rewrite, open_disk);
    reporter.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const char* state = operation == Operation::encrypt ? "encrypted" : "plaintext";
    log_info(to_string(operation) + " " + options.disk + ": done, " + std::to_string(report.result.bytes_rewritten) +
             " bytes rewritten");

    if (global.json) {
        nlohmann::json result = {{"schema", "vmcrypt-result/1"},
                                 {"command", to_string(operation)},
                                 {"disk", options.disk},
                                 {"state", state},
                                 {"bytesTotal", report.result.bytes_total},
                                 {"bytesRewritten", report.result.bytes_rewritten},
                                 {"resumed", report.result.resumed},
                                 {"seconds", seconds},
                                 {"keySlots", report.key_slots}};
        std::printf("%s\n", result.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else if (!global.quiet) {
        std::printf("%s: %s (%s of data%s)\n", options.disk.c_str(), state,
                    format_bytes(report.result.bytes_total).c_str(), report.result.resumed ? ", resumed" : "");
        if (operation == Operation::encrypt)
            for (const std::string& slot : report.key_slots)
                std::printf("  key slot: %s\n", slot.c_str());
    }
    return 0;
}

}  // namespace

int run_encrypt(const GlobalOptions& global, const RewriteCommandOptions& options)
{
    return run_rewrite(Operation::encrypt, global, options);
}

int run_decrypt(const GlobalOptions& global, const RewriteCommandOptions& options)
{
    return run_rewrite(Operation::decrypt, global, options);
}

}  // namespace vmcrypt::cli
