#include "core/log.hpp"
#include "core/text/terminal_text.hpp"

#include <atomic>
#include <cstdio>

namespace vmcrypt {

namespace {

std::atomic<LogLevel> current_level{LogLevel::warning};

const char* level_name(LogLevel level)
{
    switch (level) {
    case LogLevel::error:
        return "error";
    case LogLevel::warning:
        return "warning";
    case LogLevel::info:
        return "info";
    case LogLevel::debug:
        return "debug";
    }
    return "log";
}

}  // namespace

void set_log_level(LogLevel level)
{
    current_level = level;
}

LogLevel log_level()
{
    return current_level;
}

void log(LogLevel level, const std::string& message)
{
    if (level > current_level.load())
        return;
    std::fprintf(stderr, "vmcrypt: %s: %s\n", level_name(level), terminal_line(message).c_str());
}

}  // namespace vmcrypt
