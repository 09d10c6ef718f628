#pragma once
// A window of the run stream mapped into memory with MAP_SHARED, so hashing and XTS work directly on the
// page cache: no copy into a buffer and back. This halves the system time of a rewrite on fast storage.
//
// Crash safety holds because the mapping is only modified after the window's journal entry is durable:
// the kernel may write modified pages back at any time after that, which is the same as a partial write,
// and sync() (msync MS_SYNC, a ranged fdatasync) makes the window durable before progress advances.
// NOTE: a read error on mapped memory raises SIGBUS and ends the process instead of an IoError; the
// journal makes that a resumable crash.

#include "core/engine/run_stream.hpp"
#include "core/io/file.hpp"

#include <span>
#include <vector>

namespace vmcrypt {

class MappedWindow {
public:
    MappedWindow(const std::vector<File*>& files, const std::vector<RunSegment>& segments);
    ~MappedWindow();
    MappedWindow(const MappedWindow&) = delete;
    MappedWindow& operator=(const MappedWindow&) = delete;

    // Calls piece(bytes, first_sector, first_unit) for each contiguous part of the window's units
    // [first_unit, end_unit); first_unit is the part's index within the window.
    template <typename Piece>
    void for_each_piece(std::uint64_t first_unit, std::uint64_t end_unit, const Piece& piece) const
    {
        for (const Mapping& mapping : mappings_) {
            std::uint64_t begin = std::max(first_unit, mapping.first_unit);
            std::uint64_t end = std::min(end_unit, mapping.first_unit + mapping.unit_count);
            if (begin >= end)
                continue;
            std::uint64_t skip = begin - mapping.first_unit;
            piece(std::span<std::uint8_t>(mapping.data + skip * 512, (end - begin) * 512), mapping.first_sector + skip,
                  begin);
        }
    }

    // Makes every modified page durable (msync MS_SYNC). Throws IoError.
    void sync();

private:
    void unmap_all() noexcept;

    struct Mapping {
        void* address = nullptr;
        std::size_t mapped_length = 0;
        std::uint8_t* data = nullptr;  // the segment's first byte inside the mapping
        std::uint64_t first_unit = 0;  // within the window
        std::uint64_t unit_count = 0;
        std::uint64_t first_sector = 0;
        const File* file = nullptr;
    };
    std::vector<Mapping> mappings_;
};

}  // namespace vmcrypt
