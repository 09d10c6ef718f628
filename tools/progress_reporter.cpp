#include "tools/progress_reporter.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace vmcrypt::cli {

std::string format_bytes(std::uint64_t bytes)
{
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double value = static_cast<double>(bytes);
    int unit = 0;
    while (value >= 1024.0 && unit < 5) {
        value /= 1024.0;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
    return text;
}

ProgressReporter::ProgressReporter(ProgressMode mode, std::string disk)
    : mode_(mode), disk_(std::move(disk)), started_(std::chrono::steady_clock::now())
{
}

void ProgressReporter::update(const Progress& progress)
{
    if (!have_first_) {
        first_bytes_ = progress.bytes_done;
        have_first_ = true;
    }
    last_ = progress;
    auto now = std::chrono::steady_clock::now();
    if (now - last_print_ < std::chrono::milliseconds(500) && progress.bytes_done < progress.bytes_total)
        return;
    last_print_ = now;
    print(progress, false);
}

void ProgressReporter::finish()
{
    if (mode_ == ProgressMode::bar && drew_line_)
        std::fputc('\n', stderr);
    drew_line_ = false;
}

void ProgressReporter::print(const Progress& progress, bool /*final*/)
{
    if (mode_ == ProgressMode::none || mode_ == ProgressMode::automatic)
        return;

    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    std::uint64_t done_here = progress.bytes_done - first_bytes_;
    double rate = seconds > 0.05 ? static_cast<double>(done_here) / seconds : 0.0;
    std::uint64_t remaining = progress.bytes_total - progress.bytes_done;
    double eta = rate > 0 ? static_cast<double>(remaining) / rate : 0.0;

    if (mode_ == ProgressMode::json) {
        nlohmann::json line = {{"event", "progress"},
                               {"disk", disk_},
                               {"bytesDone", progress.bytes_done},
                               {"bytesTotal", progress.bytes_total},
                               {"bytesPerSecond", static_cast<std::uint64_t>(rate)},
                               {"etaSeconds", static_cast<std::uint64_t>(eta + 0.5)}};
        std::fprintf(stderr, "%s\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        std::fflush(stderr);
        return;
    }

    int percent = progress.bytes_total ? static_cast<int>(100.0 * static_cast<double>(progress.bytes_done) /
                                                          static_cast<double>(progress.bytes_total))
                                       : 100;
    auto eta_seconds = static_cast<unsigned long>(eta + 0.5);
    std::fprintf(stderr, "\r%s / %s  %3d%%  %s/s  ETA %lu:%02lu   ", format_bytes(progress.bytes_done).c_str(),
                 format_bytes(progress.bytes_total).c_str(), percent,
                 format_bytes(static_cast<std::uint64_t>(rate)).c_str(), eta_seconds / 60, eta_seconds % 60);
    std::fflush(stderr);
    drew_line_ = true;
}

}  // namespace vmcrypt::cli
