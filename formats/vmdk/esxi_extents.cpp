#include "formats/vmdk/esxi_extents.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

namespace vmcrypt::vmdk {

namespace {

constexpr std::size_t cowd_header_bytes = 2048;
constexpr std::uint64_t cowd_grain_table_entries = 4096;
constexpr std::uint64_t max_esxi_grain_sectors = 0x200000;  // 1 GiB, the limit qemu sets for every VMDK grain

constexpr std::uint64_t sesparse_version = 0x0000000200000001ull;
constexpr std::uint64_t sesparse_grain_sectors = 8;
constexpr std::uint64_t sesparse_table_sectors = 64;
constexpr std::uint64_t sesparse_table_entries = sesparse_table_sectors * 512 / 8;

constexpr const char* damaged = "; the delta is damaged, so restore the chain from a backup";

std::uint32_t load_u32(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return static_cast<std::uint32_t>(bytes[offset]) | static_cast<std::uint32_t>(bytes[offset + 1]) << 8 |
           static_cast<std::uint32_t>(bytes[offset + 2]) << 16 | static_cast<std::uint32_t>(bytes[offset + 3]) << 24;
}

std::uint64_t load_u64(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return std::uint64_t{load_u32(bytes, offset)} | std::uint64_t{load_u32(bytes, offset + 4)} << 32;
}

// Reads a metadata region, checking it against the file size first so that a damaged size field
// cannot make vmcrypt allocate more memory than the file holds.
std::vector<std::uint8_t> read_region(const File& file, std::uint64_t offset, std::uint64_t length,
                                      const std::string& what, std::string_view file_name)
{
    std::uint64_t file_size = file.size();
    std::vector<std::uint8_t> bytes;
    if (offset <= file_size && length <= file_size - offset)
        bytes.resize(static_cast<std::size_t>(length));
    if (bytes.size() != length || !file.read_exact(offset, bytes))
        throw InvalidInput(std::string(file_name) + ": " + what + " at byte " + std::to_string(offset) +
                           " lies past the end of the file; the file is truncated, so copy it again");
    return bytes;
}

std::string hex(std::uint64_t value)
{
    char text[24];
    std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
    return text;
}

std::uint64_t divide_round_up(std::uint64_t value, std::uint64_t divisor)
{
    return value / divisor + (value % divisor != 0 ? 1 : 0);
}

}  // namespace

std::vector<GuestRun> read_cowd_extent(const File& file, std::uint64_t sectors, std::uint64_t first_guest_sector,
                                       std::string_view file_name)
{
    std::string name(file_name);
    std::uint64_t file_size = file.size();
    if (file_size < cowd_header_bytes)
        throw InvalidInput(name + ": the file is " + std::to_string(file_size) +
                           " bytes, shorter than the 2048-byte COWD header of a vmfsSparse extent" + damaged);
    std::vector<std::uint8_t> header = read_region(file, 0, cowd_header_bytes, "COWD header", file_name);
    if (load_u32(header, 0) != cowd_magic)
        throw InvalidInput(name + ": magic: not \"COWD\", although the descriptor lists the file as a VMFSSPARSE "
                                  "extent; name the -delta.vmdk file of the snapshot");
    if (std::uint32_t version = load_u32(header, 4); version != 1)
        throw UnsupportedInput(name + ": version: COWD version " + std::to_string(version) +
                               " is not supported; vmcrypt reads version 1");
    std::uint64_t capacity = load_u32(header, 12);
    std::uint64_t grain_size = load_u32(header, 16);
    std::uint64_t gd_offset = load_u32(header, 20);
    std::uint64_t gd_entries = load_u32(header, 24);
    if (capacity != sectors)
        throw InvalidInput(name + ": numSectors: " + std::to_string(capacity) + " differs from the extent line's " +
                           std::to_string(sectors) + " sectors; correct the sector count on the extent line");
    if (grain_size == 0 || grain_size > max_esxi_grain_sectors)
        throw InvalidInput(name + ": grainSize: " + std::to_string(grain_size) +
                           " sectors is outside 1 to 2097152" + damaged);
    std::uint64_t needed_entries = divide_round_up(capacity, cowd_grain_table_entries * grain_size);
    if (gd_entries < needed_entries)
        throw InvalidInput(name + ": numGDEntries: " + std::to_string(gd_entries) + " grain tables cannot map " +
                           std::to_string(capacity) + " sectors of " + std::to_string(grain_size) +
                           "-sector grains, which need " + std::to_string(needed_entries) + damaged);
    if (gd_offset * 512 < cowd_header_bytes)
        throw InvalidInput(name + ": gdOffset: sector " + std::to_string(gd_offset) +
                           " lies inside the 2048-byte header" + damaged);

    std::vector<std::uint8_t> directory =
        read_region(file, gd_offset * 512, needed_entries * 4, "grain directory", file_name);
    std::uint64_t grain_count = divide_round_up(capacity, grain_size);
    std::vector<GuestRun> runs;
    for (std::uint64_t table = 0; table < needed_entries; ++table) {
        std::uint64_t table_sector = load_u32(directory, static_cast<std::size_t>(table * 4));
        if (table_sector == 0)
            continue;
        if (table_sector * 512 < cowd_header_bytes)
            throw InvalidInput(name + ": grain directory entry " + std::to_string(table) + ": grain table at sector " +
                               std::to_string(table_sector) + " lies inside the header" + damaged);
        std::vector<std::uint8_t> entries = read_region(file, table_sector * 512, cowd_grain_table_entries * 4,
                                                        "grain table " + std::to_string(table), file_name);
        for (std::uint64_t i = 0; i < cowd_grain_table_entries; ++i) {
            std::uint64_t grain = table * cowd_grain_table_entries + i;
            if (grain >= grain_count)
                break;
            std::uint64_t sector = load_u32(entries, static_cast<std::size_t>(i * 4));
            if (sector == 0)
                continue;
            std::uint64_t length = std::min(grain_size, capacity - grain * grain_size) * 512;
            if (sector * 512 < cowd_header_bytes || sector * 512 + length > file_size)
                throw InvalidInput(name + ": grain table entry " + std::to_string(i) + " of GT " +
                                   std::to_string(table) + " points to sector " + std::to_string(sector) +
                                   ", outside the grains of a " + std::to_string(file_size) + "-byte file" + damaged);
            append_guest_run(runs, GuestRun{(first_guest_sector + grain * grain_size) * 512, length,
                                            GuestRunKind::data, &file, sector * 512});
        }
    }
    return runs;
}

std::vector<GuestRun> read_sesparse_extent(const File& file, std::uint64_t sectors, std::uint64_t first_guest_sector,
                                           std::string_view file_name)
{
    std::string name(file_name);
    std::uint64_t file_size = file.size();
    std::vector<std::uint8_t> header = read_region(file, 0, 512, "seSparse constant header", file_name);
    if (load_u64(header, 0) != sesparse_magic)
        throw InvalidInput(name + ": magic: not the seSparse magic 0xcafebabe, although the descriptor lists the "
                                  "file as a SESPARSE extent; name the -sesparse.vmdk file of the snapshot");
    if (std::uint64_t version = load_u64(header, 8); version != sesparse_version)
        throw UnsupportedInput(name + ": version: seSparse version " + hex(version) +
                               " is not supported; vmcrypt reads version 0x200000001 (2.1)");
    std::uint64_t capacity = load_u64(header, 16);
    if (capacity != sectors)
        throw InvalidInput(name + ": capacity: " + std::to_string(capacity) + " differs from the extent line's " +
                           std::to_string(sectors) + " sectors; correct the sector count on the extent line");
    if (load_u64(header, 24) != sesparse_grain_sectors)
        throw UnsupportedInput(name + ": grain_size: " + std::to_string(load_u64(header, 24)) +
                               " sectors; vmcrypt reads seSparse grains of 8 sectors (4 KiB) only");
    if (load_u64(header, 32) != sesparse_table_sectors)
        throw UnsupportedInput(name + ": grain_table_size: " + std::to_string(load_u64(header, 32)) +
                               " sectors; vmcrypt reads seSparse grain tables of 64 sectors only");
    for (std::size_t offset = 40; offset < 80; offset += 8)
        if (load_u64(header, offset) != 0)
            throw UnsupportedInput(name + ": " + (offset == 40 ? std::string("flags") : "reserved field at byte " +
                                                                                          std::to_string(offset)) +
                                   ": not 0, so the delta uses a seSparse feature vmcrypt does not read");
    if (std::any_of(header.begin() + 208, header.end(), [](std::uint8_t byte) { return byte != 0; }))
        throw InvalidInput(name + ": the padding after byte 208 of the constant header is not all zero" + damaged);

    std::uint64_t volatile_offset = load_u64(header, 80);
    std::uint64_t directory_offset = load_u64(header, 128);
    std::uint64_t directory_size = load_u64(header, 136);
    std::uint64_t tables_offset = load_u64(header, 144);
    std::uint64_t tables_size = load_u64(header, 152);
    std::uint64_t grains_offset = load_u64(header, 192);
    std::uint64_t grains_size = load_u64(header, 200);
    // Regions may reach past the end of the file (ESXi grows it as grains are allocated), but their byte
    // offsets must not overflow.
    constexpr std::uint64_t max_region_sectors = 1ull << 48;
    for (std::uint64_t value : {volatile_offset, directory_offset, directory_size, tables_offset, tables_size,
                                grains_offset, grains_size})
        if (value > max_region_sectors)
            throw InvalidInput(name + ": a region offset or size in the constant header (" + std::to_string(value) +
                               " sectors) is larger than 2^48 sectors" + damaged);

    std::vector<std::uint8_t> volatile_header =
        read_region(file, volatile_offset * 512, 512, "seSparse volatile header", file_name);
    // The volatile header is four u64 fields (magic, free_gt_number, next_txn_seq_number,
    // replay_journal) and 480 bytes of padding; qemu 7.2 reads the magic as a u64.
    if (load_u64(volatile_header, 0) != sesparse_volatile_magic)
        throw InvalidInput(name + ": volatile header: magic " + hex(load_u64(volatile_header, 0)) +
                           " is not 0xcafecafe" + damaged);
    if (load_u64(volatile_header, 24) != 0)
        throw UnsupportedInput(name + ": volatile header: replay_journal is set, so the delta was not closed "
                                      "cleanly and its journal must be replayed; open the VM once in ESXi, or "
                                      "consolidate on the host");

    std::uint64_t grain_count = divide_round_up(capacity, sesparse_grain_sectors);
    std::uint64_t needed_entries = divide_round_up(grain_count, sesparse_table_entries);
    if (directory_size * 512 / 8 < needed_entries)
        throw InvalidInput(name + ": grain_dir_size: " + std::to_string(directory_size) +
                           " sectors cannot hold the " + std::to_string(needed_entries) +
                           " entries the capacity needs" + damaged);
    std::vector<std::uint8_t> directory =
        read_region(file, directory_offset * 512, needed_entries * 8, "grain directory", file_name);

    std::vector<GuestRun> runs;
    for (std::uint64_t table = 0; table < needed_entries; ++table) {
        std::uint64_t entry = load_u64(directory, static_cast<std::size_t>(table * 8));
        if (entry == 0)
            continue;
        std::string where = name + ": grain directory entry " + std::to_string(table);
        if ((entry & 0xffffffff00000000ull) != 0x1000000000000000ull)
            throw InvalidInput(where + ": " + hex(entry) + " is not an allocated-table entry" + damaged);
        std::uint64_t table_index = entry & 0xffffffffull;
        if ((table_index + 1) * sesparse_table_sectors > tables_size)
            throw InvalidInput(where + ": grain table " + std::to_string(table_index) +
                               " lies past the grain table region" + damaged);
        std::vector<std::uint8_t> entries =
            read_region(file, (tables_offset + table_index * sesparse_table_sectors) * 512, sesparse_table_entries * 8,
                        "grain table " + std::to_string(table_index), file_name);

        for (std::uint64_t i = 0; i < sesparse_table_entries; ++i) {
            std::uint64_t grain = table * sesparse_table_entries + i;
            if (grain >= grain_count)
                break;
            std::uint64_t value = load_u64(entries, static_cast<std::size_t>(i * 8));
            std::uint64_t guest = (first_guest_sector + grain * sesparse_grain_sectors) * 512;
            std::uint64_t length = std::min(sesparse_grain_sectors, capacity - grain * sesparse_grain_sectors) * 512;
            std::string entry_name = name + ": grain table entry " + std::to_string(i) + " of grain table " +
                                     std::to_string(table_index);
            switch (value >> 60) {
            case 0x0:
                if (value != 0)
                    throw InvalidInput(entry_name + ": an unallocated entry with other bits set" + damaged);
                break;
            case 0x1:  // unmapped by the guest (SCSI UNMAP). NOTE: qemu reads zeros here, as vmcrypt does;
                       // dissect.hypervisor reads the parent instead, and which one ESXi does is unknown.
            case 0x2:  // zero grain
                append_guest_run(runs, GuestRun{guest, length, GuestRunKind::zero});
                break;
            case 0x3: {
                std::uint64_t index = ((value & 0x0fff000000000000ull) >> 48) | ((value & 0x0000ffffffffffffull) << 12);
                if (index >= grains_size / sesparse_grain_sectors)
                    throw InvalidInput(entry_name + ": grain " + std::to_string(index) +
                                       " lies past the grain region" + damaged);
                std::uint64_t host = (grains_offset + index * sesparse_grain_sectors) * 512;
                if (host + length > file_size)
                    throw InvalidInput(entry_name + ": grain " + std::to_string(index) +
                                       " lies past the end of the file; the file is truncated, so copy it again");
                append_guest_run(runs, GuestRun{guest, length, GuestRunKind::data, &file, host});
                break;
            }
            default:
                throw InvalidInput(entry_name + ": type " + std::to_string(value >> 60) +
                                   " is none of 0 (unallocated), 1 (unmapped), 2 (zero) and 3 (allocated)" + damaged);
            }
        }
    }
    return runs;
}

}  // namespace vmcrypt::vmdk
