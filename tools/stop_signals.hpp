#pragma once
// SIGINT and SIGTERM during a rewrite: the handlers only set a flag, and the engine stops at the next
// window boundary with the disk consistent. They are installed after passphrases have been read, so that
// Ctrl-C at a prompt still ends the program at once.

#include <atomic>

namespace vmcrypt::cli {

void install_stop_handlers();
const std::atomic<bool>& stop_flag();

}  // namespace vmcrypt::cli
