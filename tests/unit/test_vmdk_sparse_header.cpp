// Tests of the hosted sparse header and grain table parsers on synthetic bytes.

#include "core/error.hpp"
#include "formats/vmdk/grain_directory.hpp"
#include "formats/vmdk/sparse_header.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

using vmcrypt::InvalidInput;
using vmcrypt::UnsupportedInput;
using namespace vmcrypt::vmdk;

namespace {

// The header qemu-img 7.2 writes for a 100 MiB monolithicSparse disk: descriptor at sector 1 (20
// sectors), redundant GD at 21, primary GD at 38, grains from sector 128.
struct HeaderFields {
    std::uint32_t magic = sparse_magic;
    std::uint32_t version = 1;
    std::uint32_t flags = 0x3;
    std::uint64_t capacity = 204800;
    std::uint64_t grain_size = 128;
    std::uint64_t descriptor_offset = 1;
    std::uint64_t descriptor_size = 20;
    std::uint32_t num_gtes_per_gt = 512;
    std::uint64_t rgd_offset = 21;
    std::uint64_t gd_offset = 38;
    std::uint64_t overhead = 128;
    std::uint8_t newline[4] = {'\n', ' ', '\r', '\n'};
    std::uint16_t compress_algorithm = 0;
};

void store(std::vector<std::uint8_t>& bytes, std::size_t offset, std::uint64_t value, int size)
{
    for (int i = 0; i < size; ++i)
        bytes[offset + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(value >> (8 * i));
}

std::vector<std::uint8_t> encode(const HeaderFields& fields)
{
    std::vector<std::uint8_t> bytes(512, 0);
    store(bytes, 0, fields.magic, 4);
    store(bytes, 4, fields.version, 4);
    store(bytes, 8, fields.flags, 4);
    store(bytes, 12, fields.capacity, 8);
    store(bytes, 20, fields.grain_size, 8);
    store(bytes, 28, fields.descriptor_offset, 8);
    store(bytes, 36, fields.descriptor_size, 8);
    store(bytes, 44, fields.num_gtes_per_gt, 4);
    store(bytes, 48, fields.rgd_offset, 8);
    store(bytes, 56, fields.gd_offset, 8);
    store(bytes, 64, fields.overhead, 8);
    for (int i = 0; i < 4; ++i)
        bytes[73 + static_cast<std::size_t>(i)] = fields.newline[i];
    store(bytes, 77, fields.compress_algorithm, 2);
    return bytes;
}

constexpr std::uint64_t qemu_file_size = 128 * 512;

std::vector<std::uint8_t> grain_table(const std::vector<std::pair<std::size_t, std::uint32_t>>& entries)
{
    std::vector<std::uint8_t> bytes(grain_table_bytes, 0);
    for (const auto& [index, value] : entries)
        store(bytes, index * 4, value, 4);
    return bytes;
}

}  // namespace

TEST(VmdkSparseHeader, DecodesQemuHeader)
{
    SparseHeader header = parse_sparse_header(encode(HeaderFields{}), qemu_file_size, "ms.vmdk");

    EXPECT_EQ(header.version, 1u);
    EXPECT_EQ(header.flags, 3u);
    EXPECT_EQ(header.capacity, 204800u);
    EXPECT_EQ(header.grain_size, 128u);
    EXPECT_EQ(header.descriptor_offset, 1u);
    EXPECT_EQ(header.descriptor_size, 20u);
    EXPECT_EQ(header.num_gtes_per_gt, 512u);
    EXPECT_EQ(header.rgd_offset, 21u);
    EXPECT_EQ(header.gd_offset, 38u);
    EXPECT_EQ(header.overhead, 128u);
    EXPECT_TRUE(header.has_redundant_grain_directory());
    EXPECT_FALSE(header.has_zeroed_grain_entries());
    EXPECT_FALSE(header.is_stream_optimized());
    EXPECT_EQ(header.grain_directory_entries(), 4u);  // 204800 / (512 * 128), rounded up
    EXPECT_EQ(header.grain_directory_sectors(), 1u);
}

TEST(VmdkSparseHeader, AcceptsGrainSizeLimits)
{
    HeaderFields one_sector;
    one_sector.grain_size = 1;
    one_sector.capacity = 1024;
    EXPECT_EQ(parse_sparse_header(encode(one_sector), qemu_file_size, "g.vmdk").grain_directory_entries(), 2u);

    HeaderFields one_gib;
    one_gib.grain_size = max_grain_size;
    one_gib.capacity = max_grain_size * 512 * 3;
    EXPECT_EQ(parse_sparse_header(encode(one_gib), qemu_file_size, "g.vmdk").grain_directory_entries(), 3u);

    HeaderFields empty;
    empty.capacity = 0;
    EXPECT_EQ(parse_sparse_header(encode(empty), qemu_file_size, "g.vmdk").grain_directory_entries(), 0u);
}

TEST(VmdkSparseHeader, IgnoresRgdOffsetWithoutFlag)
{
    HeaderFields fields;
    fields.flags = 0x1;
    fields.rgd_offset = 999999;
    EXPECT_NO_THROW(parse_sparse_header(encode(fields), qemu_file_size, "ms.vmdk"));
}

struct BadHeader {
    const char* name;
    HeaderFields fields;
    std::string expected;
    bool unsupported = false;
    std::uint64_t file_size = qemu_file_size;
};

TEST(VmdkSparseHeader, RejectsBadFields)
{
    std::vector<BadHeader> cases;
    auto add = [&](const char* name, auto change, std::string expected, bool unsupported = false,
                   std::uint64_t file_size = qemu_file_size) {
        HeaderFields fields;
        change(fields);
        cases.push_back(BadHeader{name, fields, std::move(expected), unsupported, file_size});
    };
    add("magic", [](HeaderFields& f) { f.magic = 0x44574f43; }, "magic: not \"KDMV\"");
    add("version 0", [](HeaderFields& f) { f.version = 0; }, "version is 0");
    add("version 4", [](HeaderFields& f) { f.version = 4; }, "version 4 is not supported", true);
    add("compressed", [](HeaderFields& f) { f.flags = 0x10003; }, "streamOptimized", true);
    add("markers", [](HeaderFields& f) { f.flags = 0x20003; }, "streamOptimized", true);
    add("GD at end", [](HeaderFields& f) { f.gd_offset = gd_at_end; }, "streamOptimized", true);
    add("unknown incompatible", [](HeaderFields& f) { f.flags = 0x40003; }, "unknown incompatible flags 0x40000", true);
    add("compressAlgorithm", [](HeaderFields& f) { f.compress_algorithm = 1; }, "compressAlgorithm 1", true);
    add("newline detector", [](HeaderFields& f) { f.newline[2] = '\n'; }, "newline detector");
    add("grain 0", [](HeaderFields& f) { f.grain_size = 0; }, "grainSize 0 is not a power of two");
    add("grain 3", [](HeaderFields& f) { f.grain_size = 3; }, "grainSize 3 is not a power of two");
    add("grain huge", [](HeaderFields& f) { f.grain_size = max_grain_size * 2; }, "grainSize 4194304");
    add("GTEs 256", [](HeaderFields& f) { f.num_gtes_per_gt = 256; }, "numGTEsPerGT 256 is not 512");
    add("GTEs 0", [](HeaderFields& f) { f.num_gtes_per_gt = 0; }, "numGTEsPerGT 0 is not 512");
    add("capacity overflow", [](HeaderFields& f) { f.capacity = UINT64_MAX / 512 + 1; }, "capacity 36028797018963968");
    add("capacity max", [](HeaderFields& f) { f.capacity = UINT64_MAX; }, "capacity 18446744073709551615");
    add("huge GD", [](HeaderFields& f) { f.capacity = UINT64_MAX / 512; f.grain_size = 1; }, "gdOffset region at sector 38");
    add("overHead 0", [](HeaderFields& f) { f.overhead = 0; }, "overHead is 0");
    add("overHead past end", [](HeaderFields& f) { f.overhead = 129; }, "overHead 129 sectors is past the end");
    add("truncated file", [](HeaderFields&) {}, "overHead 128 sectors is past the end", false, 65535);
    add("descriptorSize 0", [](HeaderFields& f) { f.descriptor_size = 0; }, "descriptorSize 0");
    add("descriptorSize huge", [](HeaderFields& f) { f.descriptor_size = 4096; }, "descriptorSize 4096");
    add("descriptor past end", [](HeaderFields& f) { f.descriptor_offset = 1000; }, "descriptorOffset region at sector 1000, 20 sectors long, ends past the end");
    add("descriptor offset max", [](HeaderFields& f) { f.descriptor_offset = UINT64_MAX; }, "descriptorOffset region at sector 18446744073709551615");
    add("descriptor past overHead", [](HeaderFields& f) { f.overhead = 10; f.gd_offset = 2; f.rgd_offset = 3; },
        "descriptorOffset region at sector 1, 20 sectors long, ends past overHead 10");
    add("GD 0", [](HeaderFields& f) { f.gd_offset = 0; }, "gdOffset is 0");
    add("GD past end", [](HeaderFields& f) { f.gd_offset = 5000; }, "gdOffset region at sector 5000, 1 sector long, ends past the end");
    add("GD past overHead", [](HeaderFields& f) { f.overhead = 30; }, "gdOffset region at sector 38, 1 sector long, ends past overHead 30");
    add("RGD past end", [](HeaderFields& f) { f.rgd_offset = 1u << 30; }, "rgdOffset region at sector 1073741824");
    add("GD over descriptor", [](HeaderFields& f) { f.gd_offset = 5; }, "gdOffset 5: the grain directory overlaps the embedded descriptor");
    add("RGD over descriptor", [](HeaderFields& f) { f.rgd_offset = 20; }, "rgdOffset 20: the redundant grain directory overlaps");

    for (const BadHeader& bad : cases) {
        SCOPED_TRACE(bad.name);
        try {
            parse_sparse_header(encode(bad.fields), bad.file_size, "ms.vmdk");
            ADD_FAILURE() << "no exception";
        } catch (const UnsupportedInput& error) {
            EXPECT_TRUE(bad.unsupported) << error.what();
            EXPECT_NE(std::string(error.what()).find(bad.expected), std::string::npos) << error.what();
        } catch (const InvalidInput& error) {
            EXPECT_FALSE(bad.unsupported) << error.what();
            EXPECT_NE(std::string(error.what()).find(bad.expected), std::string::npos) << error.what();
            EXPECT_EQ(std::string(error.what()).rfind("ms.vmdk: sparse header: ", 0), 0u) << error.what();
        }
    }
}

TEST(VmdkSparseHeader, RejectsTruncatedHeader)
{
    std::vector<std::uint8_t> bytes = encode(HeaderFields{});
    bytes.resize(511);
    EXPECT_THROW(parse_sparse_header(bytes, 511, "ms.vmdk"), InvalidInput);
    EXPECT_THROW(parse_sparse_header({}, 0, "ms.vmdk"), InvalidInput);
}

TEST(VmdkGrainTable, ParsesEntries)
{
    HeaderFields fields;
    fields.flags = 0x7;
    fields.version = 2;
    SparseHeader header = parse_sparse_header(encode(fields), qemu_file_size, "zg.vmdk");
    std::uint64_t file_size = (128 + 3 * 128) * 512;

    std::vector<std::uint32_t> entries =
        parse_grain_table(grain_table({{0, 128}, {1, gte_zeroed}, {5, 384}}), 2, header, file_size, "zg.vmdk");

    ASSERT_EQ(entries.size(), 512u);
    EXPECT_EQ(entries[0], 128u);
    EXPECT_EQ(entries[1], gte_zeroed);
    EXPECT_EQ(entries[2], gte_unallocated);
    EXPECT_EQ(entries[5], 384u);
}

TEST(VmdkGrainTable, IgnoresEntriesPastCapacity)
{
    HeaderFields fields;
    fields.capacity = 1000;  // 8 grains, the last one 104 sectors long
    SparseHeader header = parse_sparse_header(encode(fields), qemu_file_size, "s.vmdk");

    std::vector<std::uint32_t> entries =
        parse_grain_table(grain_table({{7, 128}, {8, 0xdeadbeef}, {511, 1}}), 0, header, (128 + 104) * 512, "s.vmdk");

    EXPECT_EQ(entries[7], 128u);
    EXPECT_EQ(entries[8], 0u);
    EXPECT_EQ(entries[511], 0u);
}

TEST(VmdkGrainTable, RejectsBadEntries)
{
    SparseHeader header = parse_sparse_header(encode(HeaderFields{}), qemu_file_size, "ms.vmdk");
    std::uint64_t file_size = 256 * 512;

    struct Case {
        const char* name;
        std::vector<std::uint8_t> table;
        std::uint64_t table_index;
        std::string expected;
    };
    std::vector<Case> cases = {
        {"zeroed without flag", grain_table({{4, 1}}), 0, "grain table entry 4 of GT 0 is 1 (zeroed grain)"},
        {"inside metadata", grain_table({{9, 127}}), 1, "grain table entry 9 of GT 1 points to sector 127, inside the metadata"},
        {"past end", grain_table({{3, 129}}), 2, "grain table entry 3 of GT 2 points past the end of the file"},
        {"far past end", grain_table({{50, 0xffffffff}}), 3, "grain table entry 50 of GT 3 points past the end"},
        {"short table", std::vector<std::uint8_t>(2047, 0), 0, "GT 0: 2047 bytes instead of 2048"},
        {"table past GD", grain_table({}), 4, "GT 4: past the last of the 4 grain directory entries"},
    };
    for (const Case& bad : cases) {
        SCOPED_TRACE(bad.name);
        try {
            parse_grain_table(bad.table, bad.table_index, header, file_size, "ms.vmdk");
            ADD_FAILURE() << "no exception";
        } catch (const InvalidInput& error) {
            EXPECT_NE(std::string(error.what()).find(bad.expected), std::string::npos) << error.what();
        }
    }
}

TEST(VmdkGrainDirectory, ScansSeedCorpus)
{
    struct Seed {
        const char* file;
        std::size_t runs;
        std::uint64_t allocated_bytes;
    };
    const Seed seeds[] = {
        {"redundant-gd.bin", 2, 3 * 512},
        {"zeroed-grains.bin", 2, 2 * 512},
        {"partial-last-grain.bin", 2, 12 * 512},
        {"two-grain-tables.bin", 3, 4 * 512},
    };
    for (const Seed& seed : seeds) {
        SCOPED_TRACE(seed.file);
        std::filesystem::path path = std::filesystem::path(VMCRYPT_TEST_DATA) / "vmdk" / "corpus-sparse" / seed.file;
        vmcrypt::File file = vmcrypt::File::open(path, vmcrypt::Access::read_only);
        std::vector<std::uint8_t> bytes(sparse_header_size);
        ASSERT_TRUE(file.read_exact(0, bytes));

        SparseHeader header = parse_sparse_header(bytes, file.size(), seed.file);
        SparseExtentScan scan = scan_sparse_extent(file, header, 0, 0, seed.file);
        EXPECT_EQ(scan.runs.size(), seed.runs);
        EXPECT_EQ(scan.allocated_bytes, seed.allocated_bytes);
    }
}
