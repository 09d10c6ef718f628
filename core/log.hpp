#pragma once
// Leveled logging to stderr. The default level prints warnings and errors only, so the user's terminal
// stays quiet; -v adds info, -vv debug. Messages never contain secrets.

#include <string>

namespace vmcrypt {

enum class LogLevel { error = 0, warning = 1, info = 2, debug = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log(LogLevel level, const std::string& message);

inline void log_warning(const std::string& m) { log(LogLevel::warning, m); }
inline void log_info(const std::string& m) { log(LogLevel::info, m); }
inline void log_debug(const std::string& m) { log(LogLevel::debug, m); }

}  // namespace vmcrypt
