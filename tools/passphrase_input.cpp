#include "tools/passphrase_input.hpp"

#include "core/error.hpp"
#include "core/io/file.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

namespace vmcrypt::cli {

namespace {

void strip_newline(SecureBytes& bytes)
{
    if (!bytes.empty() && bytes.back() == '\n') {
        bytes.pop_back();
        if (!bytes.empty() && bytes.back() == '\r')
            bytes.pop_back();
    }
}

SecureBytes read_all(int fd, const std::string& what)
{
    SecureBytes bytes;
    std::uint8_t chunk[4096];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw KeyUnavailable(what + ": reading the passphrase failed: " + std::strerror(errno));
        }
        if (n == 0)
            break;
        bytes.insert(bytes.end(), chunk, chunk + n);
        if (bytes.size() > max_passphrase_bytes)
            throw KeyUnavailable(what + ": the passphrase is longer than 64 KiB");
    }
    Botan::secure_scrub_memory(chunk, sizeof chunk);
    return bytes;
}

// The terminal state to restore when Ctrl-C ends a prompt, read by the signal handler.
int prompt_tty = -1;
struct termios prompt_saved_termios {};

// Restores echo and ends the process as the signal would: nothing has been written to a disk yet.
extern "C" void end_prompt(int signal_number)
{
    if (prompt_tty >= 0)
        ::tcsetattr(prompt_tty, TCSAFLUSH, &prompt_saved_termios);
    ::signal(signal_number, SIG_DFL);
    ::raise(signal_number);
}

SecureBytes read_line_without_echo(int tty, const std::string& prompt)
{
    ::write(tty, prompt.data(), prompt.size());

    struct termios saved {};
    bool restore = ::tcgetattr(tty, &saved) == 0;
    struct sigaction on_signal {}, old_interrupt {}, old_terminate {};
    on_signal.sa_handler = end_prompt;
    sigemptyset(&on_signal.sa_mask);
    if (restore) {
        prompt_tty = tty;
        prompt_saved_termios = saved;
        struct termios quiet = saved;
        quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        ::tcsetattr(tty, TCSAFLUSH, &quiet);
    }
    ::sigaction(SIGINT, &on_signal, &old_interrupt);
    ::sigaction(SIGTERM, &on_signal, &old_terminate);

    SecureBytes line;
    char c = 0;
    while (::read(tty, &c, 1) == 1 && c != '\n') {
        line.push_back(static_cast<std::uint8_t>(c));
        if (line.size() > max_passphrase_bytes)
            break;
    }
    c = 0;

    ::sigaction(SIGINT, &old_interrupt, nullptr);
    ::sigaction(SIGTERM, &old_terminate, nullptr);
    if (restore)
        ::tcsetattr(tty, TCSAFLUSH, &saved);
    prompt_tty = -1;
    ::write(tty, "\n", 1);
    return line;
}

}  // namespace

SecureBytes read_passphrase_file(const std::string& path)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw KeyUnavailable(path + ": cannot open the passphrase file: " + std::strerror(errno));
    SecureBytes bytes;
    try {
        bytes = read_all(fd, path);
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    strip_newline(bytes);
    return bytes;
}

SecureBytes read_passphrase_fd(int fd)
{
    std::string what = "--passphrase-fd " + std::to_string(fd);
    if (::fcntl(fd, F_GETFD) < 0)
        throw KeyUnavailable(what + ": file descriptor " + std::to_string(fd) + " is not open");
    SecureBytes bytes = read_all(fd, what);
    strip_newline(bytes);
    return bytes;
}

SecureBytes prompt_passphrase(const std::string& prompt, bool confirm)
{
    int tty = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (tty < 0)
        throw KeyUnavailable("--passphrase: no terminal to ask on; use --passphrase-file or --passphrase-fd");

    SecureBytes first = read_line_without_echo(tty, prompt);
    if (confirm) {
        SecureBytes second = read_line_without_echo(tty, "Repeat the passphrase: ");
        if (first != second) {
            ::close(tty);
            throw KeyUnavailable("--passphrase: the two passphrases differ; nothing was changed");
        }
    }
    ::close(tty);
    return first;
}

}  // namespace vmcrypt::cli
