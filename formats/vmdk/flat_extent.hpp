#pragma once
// Data runs of a flat extent (FLAT or VMFS): the host data regions of its byte range.

#include "core/disk.hpp"
#include "core/io/file.hpp"

#include <cstdint>
#include <vector>

namespace vmcrypt::vmdk {

struct FlatExtentScan {
    std::vector<DataRun> runs;
    std::uint64_t allocated_bytes = 0;  // bytes of the range that are not host holes
};

// Returns the data regions (SEEK_DATA/SEEK_HOLE) of bytes [offset, offset + length) of `file`, widened
// to 512-byte boundaries and clipped to that range, as runs of file `file_index` whose tweak starts at
// `first_guest_sector` for byte `offset`. offset and length must be multiples of 512 and the range must
// lie inside the file. On a file system without SEEK_DATA the whole range is one run.
FlatExtentScan scan_flat_extent(const File& file, std::uint64_t offset, std::uint64_t length,
                                std::size_t file_index, std::uint64_t first_guest_sector);

}  // namespace vmcrypt::vmdk
