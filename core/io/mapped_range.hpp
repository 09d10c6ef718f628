#pragma once
// A read-only view of a byte range of a file through a shared mapping, whose pages populate() reads in.
//
// The rewrite engine hashes and transforms a window's old content straight from the page cache this
// way, which saves the copy a pread would make. It only reads through the mapping: every write goes
// through pwrite, because a process killed in the middle of a store to a shared mapping would leave a
// unit half old and half new, which recovery cannot repair.
//
// A page that is evicted after the mapping is made and then fails to read back, or a mapped range that
// another process truncates away, raises SIGBUS when it is touched. vmcrypt's lock keeps QEMU and other
// vmcrypt processes away, but not a program that ignores the locks. A SIGBUS inside a live mapping
// prints the mapping's failure message and ends vmcrypt with exit status 6 (I/O error), which is as
// safe as a kill: the journal resumes the operation.

#include "core/io/file.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace vmcrypt {

class MappedRange {
public:
    // Maps [offset, offset + length) of `file`. Returns no value when the kernel rejects the mapping (a
    // file system without mmap, no address space left), and the caller then reads with pread. `failure_message` is the line printed (after
    // "vmcrypt: ") when a read through the mapping fails.
    static std::optional<MappedRange> map(const File& file, std::uint64_t offset, std::uint64_t length,
                                          const std::string& failure_message);

    MappedRange(MappedRange&& other) noexcept;
    MappedRange& operator=(MappedRange&& other) noexcept;
    MappedRange(const MappedRange&) = delete;
    MappedRange& operator=(const MappedRange&) = delete;
    ~MappedRange();

    // Maps the pages of bytes()[offset, offset + length) and reads them in, on the calling thread, so
    // that threads populate their own chunks in parallel. Returns false when a page cannot be read (the
    // caller then reads those bytes with pread, which reports the error), and on kernels before 5.14
    // when a page is not in the page cache.
    bool populate(std::uint64_t offset, std::uint64_t length) const noexcept;

    // The bytes of the range, valid until this object is destroyed. Writes to the file through pwrite
    // show here.
    std::span<const std::uint8_t> bytes() const noexcept { return bytes_; }

private:
    MappedRange(void* base, std::size_t mapped_length, std::span<const std::uint8_t> bytes, int slot) noexcept
        : base_(base), mapped_length_(mapped_length), bytes_(bytes), slot_(slot)
    {
    }
    void unmap() noexcept;

    void* base_ = nullptr;
    std::size_t mapped_length_ = 0;
    std::span<const std::uint8_t> bytes_;
    int slot_ = -1;  // in the SIGBUS handler's table, or -1
};

}  // namespace vmcrypt
