#pragma once
// The 512-byte header ("KDMV", VMDK4) at sector 0 of a hosted sparse extent.
//
// Layout and flags follow VMware's open-vmdk (vmdk/vmware_vmdk.h). All integers are little-endian,
// and every offset and size is in 512-byte sectors.

#include <cstdint>
#include <span>
#include <string_view>

namespace vmcrypt::vmdk {

inline constexpr std::size_t sparse_header_size = 512;
inline constexpr std::uint32_t sparse_magic = 0x564d444b;  // "KDMV" on disk

// Flags. Bits 0-15 are compatible (a reader may ignore unknown ones), bits 16-31 incompatible.
inline constexpr std::uint32_t flag_newline_detector = 0x1;
inline constexpr std::uint32_t flag_redundant_grain_directory = 0x2;  // rgdOffset is valid
inline constexpr std::uint32_t flag_zeroed_grain_entries = 0x4;       // GTE 1 means "zeroed grain"
inline constexpr std::uint32_t flag_compressed_grains = 0x10000;
inline constexpr std::uint32_t flag_markers = 0x20000;
inline constexpr std::uint32_t incompatible_flags_mask = 0xffff0000;

// gdOffset of a streamOptimized extent whose grain directory is found through the footer.
inline constexpr std::uint64_t gd_at_end = 0xffffffffffffffff;

inline constexpr std::uint32_t grain_table_entry_count = 512;  // numGTEsPerGT; the only value in use
inline constexpr std::uint64_t max_grain_size = 0x200000;       // sectors (1 GiB), qemu's limit
inline constexpr std::uint64_t max_descriptor_size = 2048;      // sectors (1 MiB)

struct SparseHeader {
    std::uint32_t version = 0;
    std::uint32_t flags = 0;
    std::uint64_t capacity = 0;           // guest sectors of this extent
    std::uint64_t grain_size = 0;         // sectors per grain
    std::uint64_t descriptor_offset = 0;  // 0 when there is no embedded descriptor
    std::uint64_t descriptor_size = 0;
    std::uint32_t num_gtes_per_gt = 0;
    std::uint64_t rgd_offset = 0;  // redundant grain directory
    std::uint64_t gd_offset = 0;   // primary grain directory
    std::uint64_t overhead = 0;    // sectors before the first grain: header, descriptor, GDs and GTs
    std::uint8_t unclean_shutdown = 0;
    std::uint8_t newline_detector[4] = {};  // '\n', ' ', '\r', '\n' unless the file passed a text-mode copy
    std::uint16_t compress_algorithm = 0;

    bool has_redundant_grain_directory() const { return (flags & flag_redundant_grain_directory) != 0; }
    bool has_zeroed_grain_entries() const { return (flags & flag_zeroed_grain_entries) != 0; }
    bool is_stream_optimized() const;  // compressed grains, markers or a grain directory at the end

    // Valid only after validate_sparse_header().
    std::uint64_t grain_directory_entries() const;  // ceil(capacity / (numGTEsPerGT * grainSize))
    std::uint64_t grain_directory_sectors() const;  // the GD's u32 entries rounded up to whole sectors
};

// Decodes sector 0 without validating the fields. Throws InvalidInput when `bytes` is shorter than
// 512 bytes or does not start with "KDMV".
SparseHeader decode_sparse_header(std::span<const std::uint8_t> bytes, std::string_view file_name);

// Validates a decoded header against an extent file of file_size bytes. It requires:
//   - version 1 to 3, no unknown incompatible flags, and no compression or markers (streamOptimized);
//   - intact newline detector bytes when flag 0x1 is set;
//   - grainSize a power of two from 1 to 2097152 sectors, and numGTEsPerGT 512;
//   - a capacity whose byte count fits in 64 bits;
//   - a descriptor area and grain directories inside the file, ending at or before overHead, which
//     itself lies inside the file.
//
// qemu-img writes 128-sector grains and qemu 7.2 reads any grain size up to 0x200000 sectors, so every
// power of two from 1 to 0x200000 is accepted.
//
// Throws UnsupportedInput for a well-formed header with a feature vmcrypt does not handle and
// InvalidInput for a damaged one; each message names the file and the header field.
void validate_sparse_header(const SparseHeader& header, std::uint64_t file_size, std::string_view file_name);

// Returns whether the header's descriptor area (descriptorOffset, descriptorSize) is non-empty, at
// most 1 MiB and inside a file of file_size bytes, without validating anything else. Lets a reader
// find the descriptor of an extent that validate_sparse_header() rejects, to name its createType or
// its parent.
bool has_readable_descriptor_area(const SparseHeader& header, std::uint64_t file_size);

// Decodes and validates; see the two functions above. Does no I/O, so it can be fuzzed.
SparseHeader parse_sparse_header(std::span<const std::uint8_t> bytes, std::uint64_t file_size,
                                 std::string_view file_name);

}  // namespace vmcrypt::vmdk
