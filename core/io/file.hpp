#pragma once
// Positional file I/O with explicit durability.
//
// Every short read at a place where the format promises data is reported by the caller as invalid
// input; File itself reports only system call failures (IoError), with the path in the message.

#include <cstdint>
#include <filesystem>
#include <span>

namespace vmcrypt {

enum class Access { read_only, read_write };

class File {
public:
    File() = default;
    // Opens an existing file. Read-only opens use O_RDONLY|O_NOATIME where permitted, never O_CREAT.
    static File open(const std::filesystem::path& path, Access access);
    // Creates a new file exclusively (O_CREAT|O_EXCL) with the given mode.
    static File create_new(const std::filesystem::path& path, unsigned mode);

    File(File&& other) noexcept;
    File& operator=(File&& other) noexcept;
    File(const File&) = delete;
    File& operator=(const File&) = delete;
    ~File();

    // Reads up to buffer.size() bytes at offset; returns the count, which is short only at end of file.
    std::size_t read_at(std::uint64_t offset, std::span<std::uint8_t> buffer) const;
    // Reads exactly buffer.size() bytes; returns false if the file ends first.
    bool read_exact(std::uint64_t offset, std::span<std::uint8_t> buffer) const;
    void write_exact(std::uint64_t offset, std::span<const std::uint8_t> data);
    void truncate(std::uint64_t size);
    // Hints, without effect on what is durable or read. prefetch() starts reading a range into the page
    // cache (POSIX_FADV_WILLNEED). start_writeback() starts writing a written range to the device without
    // waiting (sync_file_range SYNC_FILE_RANGE_WRITE). Only sync_data() makes data durable.
    void prefetch(std::uint64_t offset, std::uint64_t length) const noexcept;
    void start_writeback(std::uint64_t offset, std::uint64_t length) const noexcept;
    void sync_data();  // fdatasync
    void sync_all();   // fsync

    std::uint64_t size() const;
    // Start of the next data region at or after offset (SEEK_DATA), or size() if none.
    std::uint64_t next_data(std::uint64_t offset) const;
    // Start of the next hole at or after offset (SEEK_HOLE); size() at the end.
    std::uint64_t next_hole(std::uint64_t offset) const;
    // True when the file is known to have no holes without scanning it: on tmpfs, which counts exactly
    // the pages it allocated, when it has a page for each page of its size. SEEK_DATA and SEEK_HOLE on
    // tmpfs visit every page of the range (about 60 ms for 4 GiB here). False means "maybe holes".
    bool known_without_holes() const;

    int fd() const noexcept { return fd_; }
    const std::filesystem::path& path() const noexcept { return path_; }
    Access access() const noexcept { return access_; }
    bool is_open() const noexcept { return fd_ >= 0; }

private:
    int fd_ = -1;
    Access access_ = Access::read_only;
    std::filesystem::path path_;
};

// Flushes a directory so that a rename or unlink in it is durable.
void sync_directory(const std::filesystem::path& directory);

// Reads a whole small file (descriptors, key files); rejects files larger than max_bytes. Like a
// read-only File::open(), it leaves the access time unchanged where the caller owns the file.
std::string read_small_file(const std::filesystem::path& path, std::size_t max_bytes);

}  // namespace vmcrypt
