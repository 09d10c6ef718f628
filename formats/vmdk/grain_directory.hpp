#pragma once
// The grain directory (GD) and grain tables (GTs) of a hosted sparse extent, turned into data runs.
//
// GD entry t is the sector of grain table t, or 0 for no table. Entry i of that table (a GTE) locates
// guest grain t * 512 + i of the extent: 0 = unallocated, 1 = zeroed grain (only with header flag 0x4),
// anything else = the grain's first sector in the file.

#include "core/disk.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/sparse_header.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace vmcrypt::vmdk {

inline constexpr std::uint32_t gte_unallocated = 0;
inline constexpr std::uint32_t gte_zeroed = 1;
inline constexpr std::size_t grain_table_bytes = grain_table_entry_count * 4;
inline constexpr std::uint64_t grain_table_sectors = grain_table_bytes / 512;

// Decodes grain table `table_index` (its GD entry index) of an extent whose header passed
// validate_sparse_header(), and validates each entry of a grain inside the capacity. An entry must be
// 0, 1 with the zeroed-grain flag, or a sector at or after overHead whose grain (clipped to the
// capacity) ends inside a file of file_size bytes. Entries of grains past the capacity are returned as
// 0. Throws InvalidInput naming the entry and the table. Does no I/O, so it can be fuzzed.
std::vector<std::uint32_t> parse_grain_table(std::span<const std::uint8_t> bytes, std::uint64_t table_index,
                                             const SparseHeader& header, std::uint64_t file_size,
                                             std::string_view file_name);

// Two grain table entries whose grains share host sectors. qemu-img reads such an extent, but an
// in-place rewrite would transform the shared bytes twice.
struct SharedGrains : InvalidInput {
    explicit SharedGrains(const std::string& m) : InvalidInput(m) {}
};

struct SparseExtentScan {
    std::vector<DataRun> runs;        // allocated grains in guest order, merged where contiguous
    std::uint64_t allocated_bytes = 0;
};

// Reads the grain directory and each grain table of a validated sparse extent, one table at a time.
// Returns the allocated grains as data runs of file `file_index`, where `first_guest_sector` is the
// guest sector of the extent's first grain. With the redundant-GD flag, the redundant directory and
// tables must match the primary ones entry for entry. Grain tables must lie between the header and
// overHead, outside the embedded descriptor, and no two GTEs may share host sectors (SharedGrains).
// Throws InvalidInput naming the GD or GT entry at fault.
SparseExtentScan scan_sparse_extent(const File& file, const SparseHeader& header, std::size_t file_index,
                                    std::uint64_t first_guest_sector, std::string_view file_name);

}  // namespace vmcrypt::vmdk
