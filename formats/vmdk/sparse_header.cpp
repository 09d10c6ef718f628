#include "formats/vmdk/sparse_header.hpp"

#include "core/error.hpp"

#include <cstdio>
#include <cstring>
#include <string>

namespace vmcrypt::vmdk {

namespace {

std::uint32_t load_u32(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    std::uint32_t value = 0;
    for (std::size_t i = 0; i < 4; ++i)
        value |= static_cast<std::uint32_t>(bytes[offset + i]) << (8 * i);
    return value;
}

std::uint64_t load_u64(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < 8; ++i)
        value |= static_cast<std::uint64_t>(bytes[offset + i]) << (8 * i);
    return value;
}

std::string hex(std::uint64_t value)
{
    char text[24];
    std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
    return text;
}

// Builds error messages that start with "FILE: sparse header: FIELD".
struct HeaderErrors {
    std::string prefix;

    InvalidInput invalid(const std::string& field, const std::string& problem) const
    {
        return InvalidInput(prefix + field + " " + problem);
    }
    UnsupportedInput unsupported(const std::string& field, const std::string& problem) const
    {
        return UnsupportedInput(prefix + field + " " + problem);
    }
};

constexpr const char* damaged = "; the header is damaged, so restore the disk from a backup";

std::string sector_count(std::uint64_t count)
{
    return std::to_string(count) + (count == 1 ? " sector" : " sectors");
}

// Checks that the metadata region [offset, offset + count) in sectors starts after the header and ends
// inside the file and at or before overHead, without overflowing.
void check_metadata_region(const HeaderErrors& errors, const std::string& field, std::uint64_t offset,
                           std::uint64_t count, std::uint64_t file_sectors, std::uint64_t overhead)
{
    if (offset == 0)
        throw errors.invalid(field, "is 0, which is the header's own sector" + std::string(damaged));
    if (offset > file_sectors || count > file_sectors - offset)
        throw errors.invalid(field, "region at sector " + std::to_string(offset) + ", " + sector_count(count) +
                                        " long, ends past the end of the file (" + sector_count(file_sectors) +
                                        "); the file is truncated or the header is damaged");
    if (offset + count > overhead)
        throw errors.invalid(field, "region at sector " + std::to_string(offset) + ", " + sector_count(count) +
                                        " long, ends past overHead " +
                                        std::to_string(overhead) + ", where the grains start" + damaged);
}

bool regions_overlap(std::uint64_t a, std::uint64_t a_count, std::uint64_t b, std::uint64_t b_count)
{
    return a < b + b_count && b < a + a_count;
}

}  // namespace

bool SparseHeader::is_stream_optimized() const
{
    return (flags & (flag_compressed_grains | flag_markers)) != 0 || gd_offset == gd_at_end;
}

std::uint64_t SparseHeader::grain_directory_entries() const
{
    std::uint64_t sectors_per_table = std::uint64_t{num_gtes_per_gt} * grain_size;
    return capacity / sectors_per_table + (capacity % sectors_per_table != 0 ? 1 : 0);
}

std::uint64_t SparseHeader::grain_directory_sectors() const
{
    std::uint64_t bytes = grain_directory_entries() * 4;
    return bytes / 512 + (bytes % 512 != 0 ? 1 : 0);
}

SparseHeader decode_sparse_header(std::span<const std::uint8_t> bytes, std::string_view file_name)
{
    std::string prefix = std::string(file_name) + ": sparse header: ";
    if (bytes.size() < sparse_header_size)
        throw InvalidInput(prefix + "file is " + std::to_string(bytes.size()) +
                           " bytes, shorter than the 512-byte header; the file is truncated, so copy it again");
    if (load_u32(bytes, 0) != sparse_magic)
        throw InvalidInput(prefix + "magic: not \"KDMV\"; the file is not a hosted sparse extent");

    SparseHeader header;
    header.version = load_u32(bytes, 4);
    header.flags = load_u32(bytes, 8);
    header.capacity = load_u64(bytes, 12);
    header.grain_size = load_u64(bytes, 20);
    header.descriptor_offset = load_u64(bytes, 28);
    header.descriptor_size = load_u64(bytes, 36);
    header.num_gtes_per_gt = load_u32(bytes, 44);
    header.rgd_offset = load_u64(bytes, 48);
    header.gd_offset = load_u64(bytes, 56);
    header.overhead = load_u64(bytes, 64);
    header.unclean_shutdown = bytes[72];
    std::memcpy(header.newline_detector, bytes.data() + 73, 4);
    header.compress_algorithm = static_cast<std::uint16_t>(bytes[77] | (bytes[78] << 8));
    return header;
}

void validate_sparse_header(const SparseHeader& header, std::uint64_t file_size, std::string_view file_name)
{
    HeaderErrors errors{std::string(file_name) + ": sparse header: "};

    if (header.version == 0)
        throw errors.invalid("version", "is 0, expected 1, 2 or 3" + std::string(damaged));
    if (header.version > 3)
        throw errors.unsupported("version", std::to_string(header.version) +
                                                " is not supported; vmcrypt reads hosted sparse versions 1, 2 and 3");

    if (header.is_stream_optimized())
        throw errors.unsupported("flags", hex(header.flags) +
                                              " describe a streamOptimized extent (compressed grains, markers or a "
                                              "grain directory at the end), which vmcrypt cannot rewrite in place; "
                                              "convert it first with: qemu-img convert -O vmdk -o "
                                              "subformat=monolithicSparse " +
                                              std::string(file_name) + " new.vmdk");
    std::uint32_t unknown_incompatible =
        header.flags & incompatible_flags_mask & ~(flag_compressed_grains | flag_markers);
    if (unknown_incompatible != 0)
        throw errors.unsupported("flags", hex(header.flags) + " set unknown incompatible flags " +
                                              hex(unknown_incompatible) + "; vmcrypt cannot read this extent safely");
    if (header.compress_algorithm != 0)
        throw errors.unsupported("compressAlgorithm", std::to_string(header.compress_algorithm) +
                                                          " is set although grains are not compressed; vmcrypt cannot "
                                                          "read this extent safely");

    if ((header.flags & flag_newline_detector) != 0) {
        const std::uint8_t expected[4] = {'\n', ' ', '\r', '\n'};
        if (std::memcmp(header.newline_detector, expected, 4) != 0)
            throw errors.invalid("newline detector",
                                 "bytes are not \\n, ' ', \\r, \\n: the file was probably copied in text mode, "
                                 "so copy it again in binary mode");
    }

    bool power_of_two = header.grain_size != 0 && (header.grain_size & (header.grain_size - 1)) == 0;
    if (!power_of_two || header.grain_size > max_grain_size)
        throw errors.invalid("grainSize", std::to_string(header.grain_size) +
                                              " is not a power of two from 1 to 2097152 sectors" + damaged);

    if (header.num_gtes_per_gt != grain_table_entry_count)
        throw errors.invalid("numGTEsPerGT",
                             std::to_string(header.num_gtes_per_gt) + " is not 512, the only value in use" + damaged);

    if (header.capacity > UINT64_MAX / 512)
        throw errors.invalid("capacity", std::to_string(header.capacity) +
                                             " sectors is too large (its byte count does not fit in 64 bits)" + damaged);

    std::uint64_t file_sectors = file_size / 512;
    if (header.overhead == 0)
        throw errors.invalid("overHead", "is 0, which leaves no room for the header" + std::string(damaged));
    if (header.overhead > file_sectors)
        throw errors.invalid("overHead", std::to_string(header.overhead) + " sectors is past the end of the file (" +
                                             std::to_string(file_size) +
                                             " bytes); the file is truncated, so copy it again");

    if (header.descriptor_offset != 0) {
        if (header.descriptor_size == 0 || header.descriptor_size > max_descriptor_size)
            throw errors.invalid("descriptorSize", std::to_string(header.descriptor_size) +
                                                       " sectors is not from 1 to 2048 (1 MiB)" + damaged);
        check_metadata_region(errors, "descriptorOffset", header.descriptor_offset, header.descriptor_size,
                              file_sectors, header.overhead);
    }

    std::uint64_t gd_sectors = header.grain_directory_sectors();
    check_metadata_region(errors, "gdOffset", header.gd_offset, gd_sectors, file_sectors, header.overhead);
    if (header.has_redundant_grain_directory())
        check_metadata_region(errors, "rgdOffset", header.rgd_offset, gd_sectors, file_sectors, header.overhead);

    if (header.descriptor_offset != 0) {
        if (regions_overlap(header.descriptor_offset, header.descriptor_size, header.gd_offset, gd_sectors))
            throw errors.invalid("gdOffset", std::to_string(header.gd_offset) +
                                                 ": the grain directory overlaps the embedded descriptor" + damaged);
        if (header.has_redundant_grain_directory() &&
            regions_overlap(header.descriptor_offset, header.descriptor_size, header.rgd_offset, gd_sectors))
            throw errors.invalid("rgdOffset", std::to_string(header.rgd_offset) +
                                                  ": the redundant grain directory overlaps the embedded descriptor" +
                                                  damaged);
    }
}

bool has_readable_descriptor_area(const SparseHeader& header, std::uint64_t file_size)
{
    std::uint64_t file_sectors = file_size / 512;
    return header.descriptor_offset != 0 && header.descriptor_size != 0 &&
           header.descriptor_size <= max_descriptor_size && header.descriptor_offset <= file_sectors &&
           header.descriptor_size <= file_sectors - header.descriptor_offset;
}

SparseHeader parse_sparse_header(std::span<const std::uint8_t> bytes, std::uint64_t file_size,
                                 std::string_view file_name)
{
    SparseHeader header = decode_sparse_header(bytes, file_name);
    validate_sparse_header(header, file_size, file_name);
    return header;
}

}  // namespace vmcrypt::vmdk
