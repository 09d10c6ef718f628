#include "core/io/file.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

namespace vmcrypt {

namespace {

[[noreturn]] void throw_errno(const std::string& what, const std::filesystem::path& path)
{
    const int saved = errno;
    const std::string message = path.string() + ": " + what + " failed: " + std::strerror(saved);
    if (saved == ENOSPC || saved == EDQUOT)
        throw NoSpace(message);
    throw IoError(message);
}

}  // namespace

File File::open(const std::filesystem::path& path, Access access)
{
    // O_NONBLOCK keeps a FIFO from blocking the open; anything but a regular file is rejected below.
    int flags = O_CLOEXEC | O_NONBLOCK | (access == Access::read_only ? O_RDONLY : O_RDWR);
    int fd = ::open(path.c_str(), flags | (access == Access::read_only ? O_NOATIME : 0));
    if (fd < 0 && errno == EPERM && access == Access::read_only)
        fd = ::open(path.c_str(), flags);  // O_NOATIME needs file ownership
    if (fd < 0)
        throw_errno("open", path);

    File file;
    file.fd_ = fd;
    file.access_ = access;
    file.path_ = path;

    struct stat st {};
    if (::fstat(fd, &st) != 0)
        throw_errno("stat", path);
    if (!S_ISREG(st.st_mode))
        throw InvalidInput(path.string() + ": not a regular file; vmcrypt works on disk image files only");
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return file;
}

File File::create_new(const std::filesystem::path& path, unsigned mode)
{
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode));
    if (fd < 0)
        throw_errno("create", path);

    File file;
    file.fd_ = fd;
    file.access_ = Access::read_write;
    file.path_ = path;
    return file;
}

File::File(File&& other) noexcept
    : fd_(other.fd_), access_(other.access_), path_(std::move(other.path_))
{
    other.fd_ = -1;
}

File& File::operator=(File&& other) noexcept
{
    if (this != &other) {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = other.fd_;
        access_ = other.access_;
        path_ = std::move(other.path_);
        other.fd_ = -1;
    }
    return *this;
}

File::~File()
{
    if (fd_ >= 0)
        ::close(fd_);
}

std::size_t File::read_at(std::uint64_t offset, std::span<std::uint8_t> buffer) const
{
    std::size_t done = 0;
    while (done < buffer.size()) {
        ssize_t n = ::pread(fd_, buffer.data() + done, buffer.size() - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("read at offset " + std::to_string(offset + done), path_);
        }
        if (n == 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    return done;
}

bool File::read_exact(std::uint64_t offset, std::span<std::uint8_t> buffer) const
{
    return read_at(offset, buffer) == buffer.size();
}

void File::write_exact(std::uint64_t offset, std::span<const std::uint8_t> data)
{
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("write at offset " + std::to_string(offset + done), path_);
        }
        done += static_cast<std::size_t>(n);
    }
}

void File::truncate(std::uint64_t size)
{
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
        throw_errno("truncate", path_);
}

void File::prefetch(std::uint64_t offset, std::uint64_t length) const noexcept
{
    // A failure only loses the hint, and the read that follows reports real errors.
    (void)::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_WILLNEED);
}

void File::start_writeback(std::uint64_t offset, std::uint64_t length) const noexcept
{
    // A failure only loses the hint, and sync_data() reports real write errors.
    (void)::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(length), SYNC_FILE_RANGE_WRITE);
}

void File::sync_data()
{
    if (::fdatasync(fd_) != 0)
        throw_errno("fdatasync", path_);
}

void File::sync_all()
{
    if (::fsync(fd_) != 0)
        throw_errno("fsync", path_);
}

std::uint64_t File::size() const
{
    struct stat st {};
    if (::fstat(fd_, &st) != 0)
        throw_errno("stat", path_);
    return static_cast<std::uint64_t>(st.st_size);
}

std::uint64_t File::next_data(std::uint64_t offset) const
{
    off_t r = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (r < 0) {
        if (errno == ENXIO)
            return size();
        if (errno == EINVAL)  // file system without SEEK_DATA: everything is data
            return offset;
        throw_errno("seek to data", path_);
    }
    return static_cast<std::uint64_t>(r);
}

bool File::known_without_holes() const
{
    struct statfs file_system {};
    struct stat st {};
    if (::fstatfs(fd_, &file_system) != 0 || file_system.f_type != TMPFS_MAGIC || ::fstat(fd_, &st) != 0)
        return false;
    constexpr std::uint64_t page = 4096;
    const std::uint64_t pages_of_size = (static_cast<std::uint64_t>(st.st_size) + page - 1) / page;
    return static_cast<std::uint64_t>(st.st_blocks) * 512 >= pages_of_size * page;
}

std::uint64_t File::next_hole(std::uint64_t offset) const
{
    off_t r = ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
    if (r < 0) {
        if (errno == ENXIO || errno == EINVAL)
            return size();
        throw_errno("seek to hole", path_);
    }
    return static_cast<std::uint64_t>(r);
}

void sync_directory(const std::filesystem::path& directory)
{
    int fd = ::open(directory.empty() ? "." : directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        throw_errno("open directory", directory);
    int rc = ::fsync(fd);
    ::close(fd);
    if (rc != 0)
        throw_errno("fsync directory", directory);
}

std::string read_small_file(const std::filesystem::path& path, std::size_t max_bytes)
{
    // Reads with read(2) until end of file, so pipes and process substitutions work as well as files.
    // O_NOATIME as in File::open(), so that reading a .vmx or an intent file leaves its access time.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOATIME);
    if (fd < 0 && errno == EPERM)
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // O_NOATIME needs file ownership
    if (fd < 0)
        throw_errno("open", path);
    struct FdCloser {
        int fd;
        ~FdCloser() { ::close(fd); }
    } closer{fd};

    std::string text;
    char chunk[4096];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("read", path);
        }
        if (n == 0)
            break;
        if (text.size() + static_cast<std::size_t>(n) > max_bytes)
            throw InvalidInput(path.string() + ": file is more than the " + std::to_string(max_bytes) +
                               " bytes allowed");
        text.append(chunk, static_cast<std::size_t>(n));
    }
    ::explicit_bzero(chunk, sizeof chunk);  // key files pass through here
    return text;
}

}  // namespace vmcrypt
