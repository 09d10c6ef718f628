#pragma once
// The two extent formats of ESXi snapshot deltas, read into guest runs.
//
// vmfsSparse ("COWD", VMware's ESX Server sparse extent): a 2048-byte header, a grain directory of u32
// sectors of grain tables, and grain tables of 4096 u32 entries, each 0 (unallocated: read the parent)
// or the sector of the grain. Layout as in VMware's Virtual Disk Format 1.1 and qemu's block/vmdk.c.
//
// seSparse (ESXi 5.5 and later; undocumented by VMware): all fields u64, offsets and sizes in sectors,
// 4 KiB grains and grain tables of 4096 u64 entries. Layout and checks as qemu's block/vmdk.c reads it
// (qemu 4.1 and later), which is the reader vmcrypt's tests compare against.

#include "core/io/file.hpp"
#include "formats/vmdk/guest_map.hpp"

#include <cstdint>
#include <string_view>
#include <vector>

namespace vmcrypt::vmdk {

inline constexpr std::uint32_t cowd_magic = 0x44574f43;                  // "COWD"
inline constexpr std::uint64_t sesparse_magic = 0x00000000cafebabeull;    // constant header
inline constexpr std::uint64_t sesparse_volatile_magic = 0xcafecafe;      // volatile header

// Reads the COWD extent `file`, which covers `sectors` guest sectors from `first_guest_sector`, and
// returns its allocated grains as data runs. Validates the header (magic, version 1, capacity equal to
// `sectors`, grain size, grain directory size and place) and every GD and GT entry against the file.
// Throws InvalidInput naming the field or entry, UnsupportedInput for another version.
std::vector<GuestRun> read_cowd_extent(const File& file, std::uint64_t sectors, std::uint64_t first_guest_sector,
                                       std::string_view file_name);

// Reads the seSparse extent `file` like read_cowd_extent(). Allocated grains become data runs; zero
// grains (GTE type 2) and unmapped grains (type 1) become zero runs. Rejects what qemu rejects: another
// version, a grain size other than 8 sectors, a grain table size other than 64 sectors, flags or
// reserved fields that are not 0, and a volatile header that asks for a journal replay.
std::vector<GuestRun> read_sesparse_extent(const File& file, std::uint64_t sectors, std::uint64_t first_guest_sector,
                                           std::string_view file_name);

}  // namespace vmcrypt::vmdk
