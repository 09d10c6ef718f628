#include "tools/stop_signals.hpp"

#include <csignal>

namespace vmcrypt::cli {

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void request_stop(int)
{
    stop_requested.store(true);
}

}  // namespace

void install_stop_handlers()
{
    struct sigaction action {};
    action.sa_handler = request_stop;
    action.sa_flags = SA_RESTART;  // interrupted reads and writes continue; the flag is polled
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, nullptr);
    ::sigaction(SIGTERM, &action, nullptr);
}

const std::atomic<bool>& stop_flag()
{
    return stop_requested;
}

}  // namespace vmcrypt::cli
