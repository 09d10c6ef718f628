#pragma once
// Reading a passphrase from a file, a file descriptor, the environment or the terminal. Never from argv.

#include "core/crypto/secure.hpp"

#include <string>

namespace vmcrypt::cli {

inline constexpr std::size_t max_passphrase_bytes = 64 * 1024;

// File contents without one trailing newline (LF or CRLF).
SecureBytes read_passphrase_file(const std::string& path);
// Everything readable from the descriptor until end of file, without one trailing newline.
SecureBytes read_passphrase_fd(int fd);
// Prompts on /dev/tty with echo off; with confirm, asks twice and rejects a mismatch.
SecureBytes prompt_passphrase(const std::string& prompt, bool confirm);

}  // namespace vmcrypt::cli
