#include "core/io/locks.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>

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
    if (::fcntl(file.fd(), F_OFD_SETLK, &request) == 0)
        return;

    if (errno == EAGAIN || errno == EACCES)
        throw DiskInUse(file.path().string() + ": the disk is in use by another program (QEMU image lock or "
                        "another vmcrypt run); stop the virtual machine or the other process and retry");
    throw IoError(file.path().string() + ": locking failed: " + std::strerror(errno));
}

std::optional<std::string> find_lock_holder(const File& file)
{
    struct flock request = lock_request(F_WRLCK);
    if (::fcntl(file.fd(), F_OFD_GETLK, &request) != 0)
        return std::nullopt;  // locking is unsupported here, so no holder can be found
    if (request.l_type == F_UNLCK)
        return std::nullopt;
    return request.l_type == F_WRLCK ? std::string("exclusive lock (another vmcrypt run)")
                                     : std::string("shared lock (QEMU)");
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
