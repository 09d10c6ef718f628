#include "core/io/locks.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>

namespace vmcrypt {

namespace {

constexpr off_t qemu_lock_first_byte = 100;
constexpr off_t qemu_lock_length = 200;  // bytes 100..299: QEMU's permission and shared-permission bytes

struct flock lock_request(short type)
{
    struct flock request {};
    request.l_type = type;
    request.l_whence = SEEK_SET;
    request.l_start = qemu_lock_first_byte;
    request.l_len = qemu_lock_length;
    request.l_pid = 0;  // must be 0 for OFD locks
    return request;
}

}  // namespace

void lock_exclusive(File& file)
{
    struct flock request = lock_request(F_WRLCK);
    if (::fcntl(file.fd(), F_OFD_SETLK, &request) != 0) {
        if (errno == EAGAIN || errno == EACCES)
            throw DiskInUse(file.path().string() + ": the disk is in use by another program (QEMU image lock or "
                            "another vmcrypt run); stop the virtual machine or the other process and retry");
        throw IoError(file.path().string() + ": locking failed: " + std::strerror(errno));
    }

    // Scripts and backup jobs serialise on whole-file flock(2) locks, which Linux keeps apart from OFD
    // locks. Taking one too makes vmcrypt reject a disk that such a job has locked, and the job finds vmcrypt's lock.
    // NOTE: on NFS, Linux emulates flock(2) with a whole-file byte-range lock, which conflicts with the OFD
    // lock above, so there every disk reads as in use. Local file systems are not affected.
    if (::flock(file.fd(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            throw DiskInUse(file.path().string() + ": the disk is in use: another process has a flock(2) lock on the file (a "
                            "script or backup job using flock); wait for it to finish and retry");
        throw IoError(file.path().string() + ": locking failed: " + std::strerror(errno));
    }
}

std::optional<std::string> find_lock_holder(const File& file)
{
    struct flock request = lock_request(F_WRLCK);
    if (::fcntl(file.fd(), F_OFD_GETLK, &request) == 0 && request.l_type != F_UNLCK)
        return request.l_type == F_WRLCK ? std::string("exclusive lock (another vmcrypt run)")
                                         : std::string("shared lock (QEMU)");

    // flock(2) has no query, so try a shared lock and drop it at once. It writes nothing to the file.
    if (::flock(file.fd(), LOCK_SH | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? std::optional<std::string>("exclusive flock(2) lock (a script or another "
                                                                 "program)")
                                    : std::nullopt;
    ::flock(file.fd(), LOCK_UN);
    return std::nullopt;
}

std::optional<std::filesystem::path> find_vmware_lock(const std::filesystem::path& file)
{
    std::filesystem::path folder = file;
    folder += ".lck";
    std::error_code ec;
    if (std::filesystem::exists(folder, ec))
        return folder;
    return std::nullopt;
}

}  // namespace vmcrypt
