#pragma once
// Exception types for the failure classes a user or a pipeline must tell apart.
//
// Each class maps to one process exit code (documented in vmcrypt(1)). Code below the CLI throws these;
// only tools/ catches them, prints the message as one line and exits with code().

#include <stdexcept>
#include <string>

namespace vmcrypt {

enum class ExitCode : int {
    ok = 0,
    failure = 1,        // an internal error: a bug in vmcrypt
    usage = 2,          // bad command line
    invalid_input = 3,  // the disk is malformed, unsupported or in the wrong state for the request
    key_error = 4,      // a key is unavailable, or the key or passphrase is wrong
    disk_in_use = 5,    // another program has the disk open
    io_error = 6,       // a read, write or sync failed, or a file system lacks the space an operation needs
    interrupted = 7,    // an operation was stopped or is unfinished; re-running the command resumes it
};

class Error : public std::runtime_error {
public:
    Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ExitCode code() const noexcept { return code_; }

private:
    ExitCode code_;
};

struct UsageError : Error {
    explicit UsageError(const std::string& m) : Error(ExitCode::usage, m) {}
};

// Malformed or inconsistent metadata. The message names the file and the field.
struct InvalidInput : Error {
    explicit InvalidInput(const std::string& m) : Error(ExitCode::invalid_input, m) {}
};

// Well-formed input that vmcrypt does not handle (a createType, a feature bit).
struct UnsupportedInput : Error {
    explicit UnsupportedInput(const std::string& m) : Error(ExitCode::invalid_input, m) {}
};

// The disk is in a state the request does not apply to (already encrypted, has snapshots, ...).
struct WrongDiskState : Error {
    explicit WrongDiskState(const std::string& m) : Error(ExitCode::invalid_input, m) {}
};

struct KeyUnavailable : Error {
    explicit KeyUnavailable(const std::string& m) : Error(ExitCode::key_error, m) {}
};

// An RFC 3394 unwrap failed: the KEK or passphrase does not match the disk.
struct WrongKey : Error {
    explicit WrongKey(const std::string& m) : Error(ExitCode::key_error, m) {}
};

// A key has a length the primitive does not accept.
struct BadKeyLength : Error {
    explicit BadKeyLength(const std::string& m) : Error(ExitCode::failure, m) {}
};

struct DiskInUse : Error {
    explicit DiskInUse(const std::string& m) : Error(ExitCode::disk_in_use, m) {}
};

struct IoError : Error {
    explicit IoError(const std::string& m) : Error(ExitCode::io_error, m) {}
};

// A file system is full (ENOSPC, EDQUOT), or has too little free space for what an operation allocates.
struct NoSpace : IoError {
    explicit NoSpace(const std::string& m) : IoError(m) {}
};

// A stopped or unfinished operation; the disk is consistent and the same command resumes it.
struct Interrupted : Error {
    explicit Interrupted(const std::string& m) : Error(ExitCode::interrupted, m) {}
};

}  // namespace vmcrypt
