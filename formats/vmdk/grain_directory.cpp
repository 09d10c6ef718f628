#include "formats/vmdk/grain_directory.hpp"

#include "core/error.hpp"
#include "formats/vmdk/run_list.hpp"

#include <algorithm>
#include <string>

namespace vmcrypt::vmdk {

namespace {

// GD entries read per I/O, so that the memory for a huge grain directory stays bounded (16 KiB).
constexpr std::size_t gd_entries_per_read = 4096;

constexpr const char* damaged = "; the extent is damaged, so restore the disk from a backup";

std::uint32_t load_u32(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return static_cast<std::uint32_t>(bytes[offset]) | static_cast<std::uint32_t>(bytes[offset + 1]) << 8 |
           static_cast<std::uint32_t>(bytes[offset + 2]) << 16 | static_cast<std::uint32_t>(bytes[offset + 3]) << 24;
}

std::uint64_t total_grains(const SparseHeader& header)
{
    return header.capacity / header.grain_size + (header.capacity % header.grain_size != 0 ? 1 : 0);
}

// Bytes of guest data in grain `grain` (counted from the extent's start): a whole grain except a last
// grain cut short by the capacity.
std::uint64_t grain_data_bytes(const SparseHeader& header, std::uint64_t grain)
{
    std::uint64_t first_sector = grain * header.grain_size;
    return std::min(header.grain_size, header.capacity - first_sector) * 512;
}

std::string entry_name(std::uint64_t grain)
{
    return "grain table entry " + std::to_string(grain % grain_table_entry_count) + " of GT " +
           std::to_string(grain / grain_table_entry_count);
}

// Checks where GD entry `table_index` puts its grain table: after the header, before overHead and
// outside the embedded descriptor, which vmcrypt rewrites.
void check_grain_table_location(const SparseHeader& header, std::uint64_t table_index, std::uint32_t sector,
                                const char* directory, std::string_view file_name)
{
    std::string where = std::string(file_name) + ": " + directory + " entry " + std::to_string(table_index) + ": ";
    if (sector + grain_table_sectors > header.overhead)
        throw InvalidInput(where + "grain table at sector " + std::to_string(sector) + " ends past overHead " +
                           std::to_string(header.overhead) + ", where the grains start" + damaged);
    bool overlaps_descriptor = header.descriptor_offset != 0 &&
                               sector < header.descriptor_offset + header.descriptor_size &&
                               header.descriptor_offset < sector + grain_table_sectors;
    if (overlaps_descriptor)
        throw InvalidInput(where + "grain table at sector " + std::to_string(sector) +
                           " overlaps the embedded descriptor" + damaged);
}

std::vector<std::uint8_t> read_region(const File& file, std::uint64_t offset, std::size_t length,
                                      const std::string& what, std::string_view file_name)
{
    std::vector<std::uint8_t> bytes(length);
    if (!file.read_exact(offset, bytes))
        throw InvalidInput(std::string(file_name) + ": " + what + " at byte " + std::to_string(offset) +
                           " lies past the end of the file; the file is truncated, so copy it again");
    return bytes;
}

// Throws SharedGrains when two runs of one extent share host bytes, which would make two guest grains
// one and let an in-place rewrite transform the same bytes twice.
void check_no_shared_grains(const std::vector<DataRun>& runs, const SparseHeader& header,
                            std::uint64_t first_guest_sector, std::string_view file_name)
{
    std::vector<const DataRun*> by_host;
    by_host.reserve(runs.size());
    for (const DataRun& run : runs)
        by_host.push_back(&run);
    std::sort(by_host.begin(), by_host.end(),
              [](const DataRun* a, const DataRun* b) { return a->host_offset < b->host_offset; });

    for (std::size_t i = 1; i < by_host.size(); ++i) {
        const DataRun& before = *by_host[i - 1];
        const DataRun& after = *by_host[i];
        if (after.host_offset >= before.host_offset + before.length)
            continue;
        std::uint64_t before_sector = before.first_sector + (after.host_offset - before.host_offset) / 512;
        std::uint64_t before_grain = (before_sector - first_guest_sector) / header.grain_size;
        std::uint64_t after_grain = (after.first_sector - first_guest_sector) / header.grain_size;
        throw SharedGrains(std::string(file_name) + ": " + entry_name(after_grain) + " and " +
                           entry_name(before_grain) + " point to overlapping host sectors");
    }
}

}  // namespace

std::vector<std::uint32_t> parse_grain_table(std::span<const std::uint8_t> bytes, std::uint64_t table_index,
                                             const SparseHeader& header, std::uint64_t file_size,
                                             std::string_view file_name)
{
    std::string prefix = std::string(file_name) + ": ";
    if (bytes.size() != grain_table_bytes)
        throw InvalidInput(prefix + "GT " + std::to_string(table_index) + ": " + std::to_string(bytes.size()) +
                           " bytes instead of " + std::to_string(grain_table_bytes) + damaged);
    if (table_index >= header.grain_directory_entries())
        throw InvalidInput(prefix + "GT " + std::to_string(table_index) + ": past the last of the " +
                           std::to_string(header.grain_directory_entries()) + " grain directory entries" + damaged);

    std::uint64_t first_grain = table_index * grain_table_entry_count;
    std::uint64_t used_entries = std::min<std::uint64_t>(grain_table_entry_count, total_grains(header) - first_grain);

    std::vector<std::uint32_t> entries(grain_table_entry_count, gte_unallocated);
    for (std::uint64_t i = 0; i < used_entries; ++i) {
        std::uint32_t entry = load_u32(bytes, static_cast<std::size_t>(i * 4));
        std::uint64_t grain = first_grain + i;
        entries[static_cast<std::size_t>(i)] = entry;
        if (entry == gte_unallocated)
            continue;
        if (entry == gte_zeroed) {
            if (!header.has_zeroed_grain_entries())
                throw InvalidInput(prefix + entry_name(grain) +
                                   " is 1 (zeroed grain) but the header's flags lack the zeroed-grain flag 0x4" +
                                   damaged);
            continue;
        }
        if (entry < header.overhead)
            throw InvalidInput(prefix + entry_name(grain) + " points to sector " + std::to_string(entry) +
                               ", inside the metadata before overHead " + std::to_string(header.overhead) + damaged);
        std::uint64_t end = std::uint64_t{entry} * 512 + grain_data_bytes(header, grain);
        if (end > file_size)
            throw InvalidInput(prefix + entry_name(grain) + " points past the end of the file (grain at sector " +
                               std::to_string(entry) + ", file of " + std::to_string(file_size) +
                               " bytes); the file is truncated, so copy it again");
    }
    return entries;
}

SparseExtentScan scan_sparse_extent(const File& file, const SparseHeader& header, std::size_t file_index,
                                    std::uint64_t first_guest_sector, std::string_view file_name)
{
    SparseExtentScan scan;
    std::uint64_t file_size = file.size();
    std::uint64_t table_count = header.grain_directory_entries();
    bool redundant = header.has_redundant_grain_directory();

    for (std::uint64_t chunk_start = 0; chunk_start < table_count; chunk_start += gd_entries_per_read) {
        std::size_t chunk_entries =
            static_cast<std::size_t>(std::min<std::uint64_t>(gd_entries_per_read, table_count - chunk_start));
        std::vector<std::uint8_t> primary_gd =
            read_region(file, header.gd_offset * 512 + chunk_start * 4, chunk_entries * 4, "grain directory", file_name);
        std::vector<std::uint8_t> redundant_gd;
        if (redundant)
            redundant_gd = read_region(file, header.rgd_offset * 512 + chunk_start * 4, chunk_entries * 4,
                                       "redundant grain directory", file_name);

        for (std::size_t k = 0; k < chunk_entries; ++k) {
            std::uint64_t table_index = chunk_start + k;
            std::uint32_t table_sector = load_u32(primary_gd, k * 4);
            std::uint32_t redundant_sector = redundant ? load_u32(redundant_gd, k * 4) : 0;
            if (redundant && (table_sector == 0) != (redundant_sector == 0))
                throw InvalidInput(std::string(file_name) + ": grain directory entry " + std::to_string(table_index) +
                                   " is " + std::to_string(table_sector) + " in the primary GD but " +
                                   std::to_string(redundant_sector) +
                                   " in the redundant GD, so only one of them has a grain table; repair the disk by "
                                   "copying it with: qemu-img convert -O vmdk " + std::string(file_name) + " new.vmdk");
            if (table_sector == 0)
                continue;

            check_grain_table_location(header, table_index, table_sector, "grain directory", file_name);
            std::vector<std::uint8_t> table_bytes = read_region(
                file, std::uint64_t{table_sector} * 512, grain_table_bytes, "grain table " + std::to_string(table_index),
                file_name);
            std::vector<std::uint32_t> entries = parse_grain_table(table_bytes, table_index, header, file_size, file_name);

            if (redundant) {
                check_grain_table_location(header, table_index, redundant_sector, "redundant grain directory",
                                           file_name);
                std::vector<std::uint8_t> copy_bytes =
                    read_region(file, std::uint64_t{redundant_sector} * 512, grain_table_bytes,
                                "redundant grain table " + std::to_string(table_index), file_name);
                for (std::size_t i = 0; i < grain_table_entry_count; ++i) {
                    std::uint64_t grain = table_index * grain_table_entry_count + i;
                    if (grain >= total_grains(header))
                        break;
                    std::uint32_t copy = load_u32(copy_bytes, i * 4);
                    if (copy != entries[i])
                        throw InvalidInput(std::string(file_name) + ": " + entry_name(grain) + " is " +
                                           std::to_string(entries[i]) + " in the primary grain table but " +
                                           std::to_string(copy) +
                                           " in the redundant one; repair the disk by copying it with: "
                                           "qemu-img convert -O vmdk " + std::string(file_name) + " new.vmdk");
                }
            }

            for (std::size_t i = 0; i < grain_table_entry_count; ++i) {
                if (entries[i] == gte_unallocated || entries[i] == gte_zeroed)
                    continue;
                std::uint64_t grain = table_index * grain_table_entry_count + i;
                DataRun run;
                run.file_index = file_index;
                run.host_offset = std::uint64_t{entries[i]} * 512;
                run.length = grain_data_bytes(header, grain);
                run.first_sector = first_guest_sector + grain * header.grain_size;
                append_run(scan.runs, run);
                scan.allocated_bytes += run.length;
            }
        }
    }

    check_no_shared_grains(scan.runs, header, first_guest_sector, file_name);
    return scan;
}

}  // namespace vmcrypt::vmdk
