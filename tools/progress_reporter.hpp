#pragma once
// Progress output on stderr: a redrawn terminal line (bytes, rate, ETA) or JSON lines for pipelines,
// at most one every 0.5 s plus a final one.

#include "core/engine/rewrite_engine.hpp"
#include "tools/cli_options.hpp"

#include <chrono>

namespace vmcrypt::cli {

class ProgressReporter {
public:
    ProgressReporter(ProgressMode mode, std::string disk);
    ~ProgressReporter() { finish(); }  // ends the terminal line even when the operation throws
    void update(const Progress& progress);
    void finish();

private:
    void print(const Progress& progress, bool final);

    ProgressMode mode_;
    std::string disk_;
    std::chrono::steady_clock::time_point started_;
    std::chrono::steady_clock::time_point last_print_{};
    std::uint64_t first_bytes_ = 0;  // bytes already done when this run started (a resume)
    bool have_first_ = false;
    Progress last_{};
    bool drew_line_ = false;
};

std::string format_bytes(std::uint64_t bytes);

}  // namespace vmcrypt::cli
