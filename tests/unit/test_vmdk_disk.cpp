// Tests of VmdkDisk on real disks made by qemu-img and qemu-io 7.2: data runs against
// `qemu-img map`, the encryption record round trip, relations and read-only opens.

#include "core/error.hpp"
#include "formats/vmdk/vmdk_disk.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

using namespace vmcrypt;
using namespace vmcrypt::test;

namespace {

const RecordFields sample_record = {
    {"version", "1"},
    {"state", "encrypted"},
    {"cipher", "aes-xts-plain64"},
    {"dekBits", "512"},
    {"unitSize", "512"},
    {"tweak", "guest-sector"},
    {"zeroUnits", "plain"},
    {"keySlot.0", "type=keystore;kek=8d1c0c1e-2f35-4f0e-9b4e-0a3f0f2b7c11;wrap=aes-kw;dek=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="},
    {"mac", "hmac-sha256:c2FtcGxlIG1hYyB2YWx1ZSBmb3IgdGVzdHM="},
};

void qemu_create(const std::filesystem::path& disk, const std::string& subformat, const std::string& size)
{
    run_command("qemu-img create -q -f vmdk -o subformat=" + subformat + " " + shell_quote(disk) + " " + size);
}

void qemu_io(const std::filesystem::path& disk, const std::vector<std::string>& commands)
{
    std::string line = "qemu-io -f vmdk";
    for (const std::string& command : commands)
        line += " -c " + shell_quote(command);
    run_command(line + " " + shell_quote(disk));
}

// Writes that touch the first grain, a partial grain, both sides of qemu's 2 GiB extent split, and a
// grain far into the disk.
const std::vector<std::string> sample_writes = {
    "write -P 0xaa 0 1M",
    "write -P 0xdd 1100k 4k",
    "write -P 0xbb 2047M 2M",
    "write -P 0xcc 4G 64k",
};

std::vector<std::uint64_t> extent_starts(const Disk& disk)
{
    std::vector<std::uint64_t> starts;
    for (const ExtentInfo& extent : disk.extents())
        starts.push_back(extent.guest_offset);
    return starts;
}

std::uint64_t total_length(const std::vector<MappedRange>& ranges)
{
    std::uint64_t total = 0;
    for (const MappedRange& range : ranges)
        total += range.length;
    return total;
}

void expect_runs_match_qemu_map(const Disk& disk, const std::filesystem::path& qemu_path)
{
    std::vector<std::uint64_t> starts = extent_starts(disk);
    std::vector<MappedRange> ours = merge_ranges(ranges_of_runs(disk.data_runs()), starts);
    std::vector<MappedRange> qemus = merge_ranges(qemu_data_ranges(qemu_path), starts);
    EXPECT_EQ(ours, qemus);

    std::uint64_t allocated = 0;
    for (const ExtentInfo& extent : disk.extents())
        allocated += extent.allocated;
    EXPECT_EQ(allocated, total_length(qemus));
    EXPECT_GT(allocated, 0u);
}

void expect_runs_well_formed(const Disk& disk)
{
    std::vector<DataRun> runs = disk.data_runs();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        EXPECT_EQ(runs[i].host_offset % 512, 0u);
        EXPECT_EQ(runs[i].length % 512, 0u);
        EXPECT_GT(runs[i].length, 0u);
        EXPECT_LE(runs[i].first_sector * 512 + runs[i].length, disk.capacity());
        if (i > 0) {
            EXPECT_LE(runs[i - 1].first_sector * 512 + runs[i - 1].length, runs[i].first_sector * 512);
        }
    }
}

std::string descriptor_text(const std::filesystem::path& path)
{
    std::string text = read_file(path);
    return text.substr(0, text.find('\0'));
}

std::string replace_once(std::string text, const std::string& from, const std::string& to)
{
    std::size_t pos = text.find(from);
    if (pos == std::string::npos)
        throw std::runtime_error("\"" + from + "\" not found in:\n" + text);
    return text.replace(pos, from.size(), to);
}

// Turns a qemu monolithicFlat descriptor of `sectors` sectors into one of createType `create_type`
// with a VMFS extent.
void rewrite_as_vmfs(const std::filesystem::path& descriptor, const std::string& flat_name, std::uint64_t sectors,
                     const std::string& create_type)
{
    std::string text = descriptor_text(descriptor);
    text = replace_once(text, "createType=\"monolithicFlat\"", "createType=\"" + create_type + "\"");
    std::string sectors_text = std::to_string(sectors);
    text = replace_once(text, "RW " + sectors_text + " FLAT \"" + flat_name + "\" 0",
                        "RW " + sectors_text + " VMFS \"" + flat_name + "\"");
    if (create_type == "vmfsThin")
        text += "ddb.thinProvisioned = \"1\"\n";
    write_file(descriptor, text);
}

// Sets the record, checks it through a second open (and `qemu-img info` unless qemu cannot read the
// descriptor), removes it, and checks that every file of the folder is back to its original bytes.
void expect_record_round_trip(const std::filesystem::path& disk_path, const std::filesystem::path& folder,
                              bool qemu_reads_descriptor = true)
{
    std::map<std::string, std::string> before = hash_folder(folder);
    {
        std::unique_ptr<Disk> disk = open_vmdk(disk_path, Access::read_write);
        EXPECT_FALSE(disk->record().has_value());
        MetadataWrite write = disk->record_update(sample_record);
        EXPECT_EQ(write.file_index, 0u);
        disk->apply(write);
        EXPECT_EQ(disk->record(), sample_record);
    }
    EXPECT_NE(hash_folder(folder), before);
    {
        std::unique_ptr<Disk> disk = open_vmdk(disk_path, Access::read_only);
        EXPECT_EQ(disk->record(), sample_record);
    }
    if (qemu_reads_descriptor)
        run_command("qemu-img info -f vmdk " + shell_quote(disk_path));
    {
        std::unique_ptr<Disk> disk = open_vmdk(disk_path, Access::read_write);
        disk->apply(disk->record_update(std::nullopt));
        EXPECT_FALSE(disk->record().has_value());
    }
    EXPECT_EQ(hash_folder(folder), before);
}

constexpr std::uint64_t five_gib_sectors = 5ull << 21;

}  // namespace

TEST(VmdkDisk, MonolithicSparseRunsMatchQemu)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "5G");
    qemu_io(path, sample_writes);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->format(), "vmdk");
    EXPECT_EQ(disk->subformat(), "monolithicSparse");
    EXPECT_EQ(disk->capacity(), 5ull << 30);
    EXPECT_EQ(disk->tweak_rule(), "guest-sector");
    ASSERT_EQ(disk->files().size(), 1u);
    EXPECT_EQ(disk->files()[0]->path(), path);
    ASSERT_EQ(disk->extents().size(), 1u);
    EXPECT_EQ(disk->extents()[0].type, "SPARSE");
    EXPECT_EQ(disk->extents()[0].size, 5ull << 30);
    EXPECT_EQ(disk->extents()[0].file_size, std::filesystem::file_size(path));
    expect_runs_match_qemu_map(*disk, path);
    expect_runs_well_formed(*disk);
}

TEST(VmdkDisk, LargeSparseDiskRunsMatchQemu)
{
    // 100 GiB: 3200 grain tables in each of the two grain directories.
    TempFolder folder;
    std::filesystem::path path = folder / "big.vmdk";
    qemu_create(path, "monolithicSparse", "100G");
    qemu_io(path, {"write -P 0x11 0 64k", "write -P 0x22 50G 192k", "write -P 0x33 107374178304 4k"});

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->capacity(), 100ull << 30);
    EXPECT_EQ(disk->data_runs().size(), 3u);
    expect_runs_match_qemu_map(*disk, path);
}

TEST(VmdkDisk, SparseRunsMergeContiguousGrains)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "100M");
    qemu_io(path, {"write -P 0xaa 0 1M", "write -P 0xbb 64M 64k"});

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    std::vector<DataRun> expected = {
        DataRun{0, 65536, 1 << 20, 0},
        DataRun{0, 65536 + (1 << 20), 65536, (64u << 20) / 512},
    };
    EXPECT_EQ(disk->data_runs(), expected);
}

TEST(VmdkDisk, MonolithicFlatRunsMatchQemu)
{
    TempFolder folder;
    std::filesystem::path path = folder / "mf.vmdk";
    qemu_create(path, "monolithicFlat", "5G");
    qemu_io(path, sample_writes);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->subformat(), "monolithicFlat");
    ASSERT_EQ(disk->files().size(), 2u);
    EXPECT_EQ(disk->files()[0]->path(), path);
    EXPECT_EQ(disk->files()[1]->path(), folder / "mf-flat.vmdk");
    ASSERT_EQ(disk->extents().size(), 1u);
    EXPECT_EQ(disk->extents()[0].file, "mf-flat.vmdk");
    EXPECT_EQ(disk->extents()[0].type, "FLAT");
    expect_runs_match_qemu_map(*disk, path);
    expect_runs_well_formed(*disk);
}

TEST(VmdkDisk, SplitSparseRunsMatchQemu)
{
    TempFolder folder;
    std::filesystem::path path = folder / "tgs.vmdk";
    qemu_create(path, "twoGbMaxExtentSparse", "5G");
    qemu_io(path, sample_writes);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->subformat(), "twoGbMaxExtentSparse");
    EXPECT_EQ(disk->capacity(), 5ull << 30);
    ASSERT_EQ(disk->files().size(), 4u);
    ASSERT_EQ(disk->extents().size(), 3u);
    EXPECT_EQ(disk->extents()[1].guest_offset, 2ull << 30);
    EXPECT_EQ(disk->extents()[2].file, "tgs-s003.vmdk");
    expect_runs_match_qemu_map(*disk, path);
    expect_runs_well_formed(*disk);

    // The 2M write at 2047M straddles the first two extents: one run in each file.
    bool found_second_file = false;
    for (const DataRun& run : disk->data_runs())
        found_second_file = found_second_file || (run.file_index == 2 && run.first_sector == (2ull << 30) / 512);
    EXPECT_TRUE(found_second_file);
}

TEST(VmdkDisk, SplitFlatRunsMatchQemu)
{
    TempFolder folder;
    std::filesystem::path path = folder / "tgf.vmdk";
    qemu_create(path, "twoGbMaxExtentFlat", "5G");
    qemu_io(path, sample_writes);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->subformat(), "twoGbMaxExtentFlat");
    ASSERT_EQ(disk->files().size(), 4u);
    ASSERT_EQ(disk->extents().size(), 3u);
    expect_runs_match_qemu_map(*disk, path);
    expect_runs_well_formed(*disk);
}

TEST(VmdkDisk, VmfsRunsMatchQemu)
{
    TempFolder folder;
    std::filesystem::path path = folder / "v.vmdk";
    qemu_create(path, "monolithicFlat", "5G");
    qemu_io(path, sample_writes);
    rewrite_as_vmfs(path, "v-flat.vmdk", five_gib_sectors, "vmfs");

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->subformat(), "vmfs");
    ASSERT_EQ(disk->extents().size(), 1u);
    EXPECT_EQ(disk->extents()[0].type, "VMFS");
    expect_runs_match_qemu_map(*disk, path);
    expect_runs_well_formed(*disk);
}

TEST(VmdkDisk, VmfsThinRunsMatchVmfs)
{
    TempFolder folder;
    std::filesystem::path path = folder / "t.vmdk";
    qemu_create(path, "monolithicFlat", "5G");
    qemu_io(path, sample_writes);
    std::string flat_descriptor = descriptor_text(path);
    rewrite_as_vmfs(path, "t-flat.vmdk", five_gib_sectors, "vmfs");
    std::vector<DataRun> vmfs_runs = open_vmdk(path, Access::read_only)->data_runs();

    // qemu 7.2 does not open vmfsThin, so the runs are compared with the same files read as vmfs.
    write_file(path, flat_descriptor);
    rewrite_as_vmfs(path, "t-flat.vmdk", five_gib_sectors, "vmfsThin");
    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->subformat(), "vmfsThin");
    EXPECT_EQ(disk->data_runs(), vmfs_runs);
    EXPECT_FALSE(vmfs_runs.empty());
}

TEST(VmdkDisk, ZeroExtentHasNoRuns)
{
    TempFolder folder;
    std::filesystem::path path = folder / "z.vmdk";
    qemu_create(path, "monolithicFlat", "1M");
    qemu_io(path, {"write -P 0xaa 0 1M"});
    std::string text = replace_once(descriptor_text(path), "RW 2048 FLAT \"z-flat.vmdk\" 0\n",
                                    "RW 2048 ZERO\nRW 2048 FLAT \"z-flat.vmdk\" 0\nRW 100 ZERO\n");
    write_file(path, text);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->capacity(), (2048u + 2048u + 100u) * 512);
    ASSERT_EQ(disk->extents().size(), 3u);
    EXPECT_EQ(disk->extents()[0].file, "");
    EXPECT_EQ(disk->extents()[0].allocated, 0u);
    EXPECT_EQ(disk->files().size(), 2u);
    std::vector<DataRun> expected = {DataRun{1, 0, 1 << 20, 2048}};
    EXPECT_EQ(disk->data_runs(), expected);
}

TEST(VmdkDisk, FlatExtentAtOffset)
{
    TempFolder folder;
    std::filesystem::path path = folder / "o.vmdk";
    run_command("truncate -s 2M " + shell_quote(folder / "o.raw"));
    run_command("printf 'data' | dd of=" + shell_quote(folder / "o.raw") + " bs=512 seek=1030 conv=notrunc status=none");
    write_file(path, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                     "createType=\"monolithicFlat\"\nRW 2048 FLAT \"o.raw\" 1024\n");

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    ASSERT_EQ(disk->data_runs().size(), 1u);
    DataRun run = disk->data_runs()[0];
    EXPECT_EQ(run.file_index, 1u);
    EXPECT_LE(run.host_offset, 1030u * 512);
    EXPECT_GE(run.host_offset, 1024u * 512);
    EXPECT_GE(run.host_offset + run.length, 1031u * 512);
    EXPECT_EQ(run.first_sector, run.host_offset / 512 - 1024);
}

TEST(VmdkDisk, ZeroedGrainsAreNotData)
{
    TempFolder folder;
    std::filesystem::path path = folder / "zg.vmdk";
    run_command("qemu-img create -q -f vmdk -o zeroed_grain=on " + shell_quote(path) + " 10M");
    qemu_io(path, {"write -P 0x55 0 1M", "write -z 0 128k", "write -z 512k 4k"});
    EXPECT_EQ(read_le(path, 4, 4), 2u);      // version 2
    EXPECT_EQ(read_le(path, 8, 4) & 4, 4u);  // zeroed-grain flag

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    expect_runs_match_qemu_map(*disk, path);
    ASSERT_FALSE(disk->data_runs().empty());
    EXPECT_EQ(disk->data_runs()[0].first_sector, 128 * 1024 / 512);
    EXPECT_EQ(disk->extents()[0].allocated, (1u << 20) - (128u << 10));
}

// Overwrites with zeros the embedded descriptor area after the text's terminating NUL. When qemu
// rewrites the CID with "%x" and the new value has fewer digits, the old line's last characters stay
// behind the NUL; vmcrypt writes the area NUL-padded, so those bytes cannot survive a round trip.
void clear_stale_descriptor_bytes(const std::filesystem::path& path)
{
    std::string bytes = read_file(path);
    std::size_t end = bytes.find('\0', 512);
    std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(end), bytes.begin() + 512 + 20 * 512, '\0');
    write_file(path, bytes);
}

TEST(VmdkDisk, EmbeddedRecordRoundTrip)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "100M");
    qemu_io(path, {"write -P 0xaa 0 1M"});
    clear_stale_descriptor_bytes(path);

    expect_record_round_trip(path, folder.path());
    run_command("qemu-img check -f vmdk " + shell_quote(path));
}

TEST(VmdkDisk, EmbeddedRecordClearsStaleBytes)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "10M");
    std::string original = read_file(path);
    std::size_t text_end = original.find('\0', 512);
    std::string stale = original;
    stale.replace(text_end + 1, 3, "63\"");
    write_file(path, stale);

    {
        std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
        disk->apply(disk->record_update(sample_record));
        disk->apply(disk->record_update(std::nullopt));
    }
    EXPECT_EQ(read_file(path), original);
}

TEST(VmdkDisk, EmbeddedRecordWriteCoversArea)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "100M");

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
    MetadataWrite write = disk->record_update(sample_record);
    EXPECT_EQ(write.offset, 512u);
    EXPECT_EQ(write.bytes.size(), 20u * 512);
    EXPECT_FALSE(write.truncate_to.has_value());
    EXPECT_EQ(write.bytes.back(), 0);

    disk->apply(write);
    std::string area = read_file(path).substr(512, 20 * 512);
    EXPECT_NE(area.find("ddb.vmcrypt.state = \"encrypted\"\n"), std::string::npos);
    EXPECT_EQ(area, std::string(write.bytes.begin(), write.bytes.end()));
}

TEST(VmdkDisk, SeparateRecordRoundTrip)
{
    TempFolder folder;
    std::filesystem::path path = folder / "mf.vmdk";
    qemu_create(path, "monolithicFlat", "10M");
    expect_record_round_trip(path, folder.path());

    // After a qemu write the descriptor is NUL-padded to 512 bytes; the padding survives too.
    qemu_io(path, {"write -P 0xaa 0 1M"});
    EXPECT_EQ(std::filesystem::file_size(path), 512u);
    expect_record_round_trip(path, folder.path());
}

TEST(VmdkDisk, SeparateRecordWriteTruncates)
{
    TempFolder folder;
    std::filesystem::path path = folder / "mf.vmdk";
    qemu_create(path, "monolithicFlat", "10M");
    std::uint64_t original_size = std::filesystem::file_size(path);

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
    MetadataWrite add = disk->record_update(sample_record);
    EXPECT_EQ(add.offset, 0u);
    ASSERT_TRUE(add.truncate_to.has_value());
    EXPECT_EQ(*add.truncate_to, add.bytes.size());
    disk->apply(add);
    EXPECT_EQ(std::filesystem::file_size(path), add.bytes.size());

    MetadataWrite remove = disk->record_update(std::nullopt);
    EXPECT_EQ(remove.truncate_to, original_size);
    disk->apply(remove);
    EXPECT_EQ(std::filesystem::file_size(path), original_size);
}

TEST(VmdkDisk, CrlfRecordRoundTrip)
{
    TempFolder folder;
    std::filesystem::path path = folder / "crlf.vmdk";
    qemu_create(path, "twoGbMaxExtentSparse", "10M");
    std::string text = descriptor_text(path);
    std::string crlf;
    for (char c : text)
        crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
    write_file(path, crlf);

    expect_record_round_trip(path, folder.path());
    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
    disk->apply(disk->record_update(sample_record));
    EXPECT_NE(read_file(path).find("ddb.vmcrypt.version = \"1\"\r\n"), std::string::npos);
}

TEST(VmdkDisk, HandEditedRecordRoundTrip)
{
    TempFolder folder;
    std::filesystem::path path = folder / "my disk.vmdk";
    run_command("truncate -s 4M " + shell_quote(folder / "my disk-flat.vmdk"));
    run_command("printf 'hello' | dd of=" + shell_quote(folder / "my disk-flat.vmdk") +
                " bs=512 seek=8 conv=notrunc status=none");
    write_file(path, "# Disk DescriptorFile\n"
                     "# edited by hand\n"
                     "version=1\n"
                     "encoding=\"UTF-8\"\n"
                     "CID=fffffffe\n"
                     "parentCID=ffffffff\n"
                     "createType = \"monolithicFlat\"\n"
                     "\n"
                     "# Extent description\n"
                     "RW\t8192\tFLAT\t\"my disk-flat.vmdk\"\t0\n"
                     "\n"
                     "# The Disk Data Base\n"
                     "#DDB\n"
                     "\n"
                     "ddb.adapterType\t=\t\"lsilogic\"\n"
                     "ddb.uuid = \"60 00 C2 97 ee 00 4e ed-cb 09 ab 10 91 3f 7f 99\"\n"
                     "# end of the DDB\n");

    // qemu 7.2 rejects `createType = "..."` with spaces ("Unsupported image type").
    expect_record_round_trip(path, folder.path(), false);
    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_only);
    EXPECT_EQ(disk->extents()[0].file, "my disk-flat.vmdk");
    EXPECT_EQ(disk->data_runs().size(), 1u);
}

TEST(VmdkDisk, EmbeddedDescriptorOverflow)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "10M");
    std::map<std::string, std::string> before = hash_folder(folder.path());

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
    RecordFields big = sample_record;
    big.emplace_back("keySlot.1", std::string(10000, 'A'));
    try {
        disk->record_update(big);
        ADD_FAILURE() << "no exception";
    } catch (const InvalidInput& error) {
        std::string message = error.what();
        EXPECT_NE(message.find("ms.vmdk: embedded descriptor: "), std::string::npos) << message;
        EXPECT_NE(message.find(" bytes, but descriptorSize reserves only 10240"), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
    EXPECT_FALSE(disk->record().has_value());
    EXPECT_EQ(hash_folder(folder.path()), before);
}

TEST(VmdkDisk, ApplyRejectsOtherTargets)
{
    TempFolder folder;
    std::filesystem::path path = folder / "ms.vmdk";
    qemu_create(path, "monolithicSparse", "10M");
    std::map<std::string, std::string> before = hash_folder(folder.path());

    std::unique_ptr<Disk> disk = open_vmdk(path, Access::read_write);
    MetadataWrite write = disk->record_update(sample_record);
    MetadataWrite shifted = write;
    shifted.offset += 512;
    EXPECT_THROW(disk->apply(shifted), Error);
    MetadataWrite garbage = write;
    garbage.bytes.assign(garbage.bytes.size(), 'x');
    EXPECT_THROW(disk->apply(garbage), InvalidInput);
    EXPECT_EQ(hash_folder(folder.path()), before);

    std::unique_ptr<Disk> read_only = open_vmdk(path, Access::read_only);
    EXPECT_THROW(read_only->apply(write), Error);
    EXPECT_EQ(hash_folder(folder.path()), before);
}

TEST(VmdkDisk, ReadOnlyOpenWritesNothing)
{
    TempFolder folder;
    qemu_create(folder / "ms.vmdk", "monolithicSparse", "10M");
    qemu_create(folder / "mf.vmdk", "monolithicFlat", "10M");
    qemu_create(folder / "tgs.vmdk", "twoGbMaxExtentSparse", "10M");
    qemu_io(folder / "ms.vmdk", {"write -P 0xaa 0 1M"});
    run_command("qemu-img create -q -f vmdk -b ms.vmdk -F vmdk " + shell_quote(folder / "child.vmdk"));
    std::map<std::string, std::string> before = hash_folder(folder.path());

    for (const char* name : {"ms.vmdk", "mf.vmdk", "tgs.vmdk", "child.vmdk"}) {
        std::unique_ptr<Disk> disk = open_vmdk(folder / name, Access::read_only);
        for (File* file : disk->files())
            EXPECT_EQ(file->access(), Access::read_only);
        disk->data_runs();
        disk->relations();
        disk->extents();
        disk->foreign_encryption();
        disk->record_update(sample_record);
        disk->record_update(std::nullopt);
    }
    EXPECT_EQ(hash_folder(folder.path()), before);
}

TEST(VmdkDisk, FindsParentAndChildren)
{
    TempFolder folder;
    std::filesystem::path base = folder / "base.vmdk";
    qemu_create(base, "monolithicSparse", "10M");
    run_command("cd " + shell_quote(folder.path()) + " && qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk");
    run_command("cd " + shell_quote(folder.path()) +
                " && qemu-img create -q -f vmdk -b child.vmdk -F vmdk grandchild.vmdk");
    // A child that vmcrypt cannot rewrite is still a child.
    run_command("cd " + shell_quote(folder.path()) +
                " && qemu-img create -q -f vmdk -o subformat=streamOptimized -b base.vmdk -F vmdk stream.vmdk");
    qemu_create(folder / "other.vmdk", "monolithicFlat", "1M");
    write_file(folder / "junk.vmdk", "not a descriptor\n");
    // A descriptor that names the base but does not parse may be a snapshot vmcrypt cannot read, so it
    // is listed, not skipped.
    write_file(folder / "broken.vmdk", "# Disk DescriptorFile\nversion=1\nparentFileNameHint=\"base.vmdk\"\n");

    DiskRelations base_relations = open_vmdk(base, Access::read_only)->relations();
    EXPECT_TRUE(base_relations.parents.empty());
    std::vector<std::string> expected_children = {(folder / "broken.vmdk").string(), (folder / "child.vmdk").string(),
                                                  (folder / "stream.vmdk").string()};
    EXPECT_EQ(base_relations.children, expected_children);

    DiskRelations child_relations = open_vmdk(folder / "child.vmdk", Access::read_only)->relations();
    std::vector<std::string> expected_parents = {"base.vmdk"};
    EXPECT_EQ(child_relations.parents, expected_parents);
    std::vector<std::string> expected_grandchildren = {(folder / "grandchild.vmdk").string()};
    EXPECT_EQ(child_relations.children, expected_grandchildren);

    DiskRelations other_relations = open_vmdk(folder / "other.vmdk", Access::read_only)->relations();
    EXPECT_TRUE(other_relations.parents.empty());
    EXPECT_TRUE(other_relations.children.empty());
}

TEST(VmdkDisk, ParentCidWithoutHintIsParent)
{
    TempFolder folder;
    std::filesystem::path path = folder / "d.vmdk";
    qemu_create(path, "monolithicFlat", "1M");
    write_file(path, replace_once(descriptor_text(path), "parentCID=ffffffff", "parentCID=1234abcd"));

    DiskRelations relations = open_vmdk(path, Access::read_only)->relations();
    std::vector<std::string> expected = {"parentCID=1234abcd"};
    EXPECT_EQ(relations.parents, expected);
}

TEST(VmdkDisk, ReportsVmwareEncryption)
{
    TempFolder folder;
    std::filesystem::path path = folder / "e.vmdk";
    qemu_create(path, "monolithicFlat", "1M");
    std::string plain = descriptor_text(path);
    EXPECT_FALSE(open_vmdk(path, Access::read_only)->foreign_encryption().has_value());

    write_file(path, replace_once(plain, "createType=", "encryptionKeys=\"vmware:key/list/()\"\ncreateType="));
    EXPECT_EQ(open_vmdk(path, Access::read_only)->foreign_encryption(), "VMware (encryptionKeys in the descriptor)");

    write_file(path, plain + "ddb.iofilters = \"vmwarevmcrypt\"\n");
    EXPECT_EQ(open_vmdk(path, Access::read_only)->foreign_encryption(),
              "VMware (vmwarevmcrypt I/O filter in ddb.iofilters)");
}

TEST(VmdkDisk, RdonlyExtentOnlyReadOnly)
{
    TempFolder folder;
    std::filesystem::path path = folder / "r.vmdk";
    qemu_create(path, "monolithicFlat", "1M");
    write_file(path, replace_once(descriptor_text(path), "RW 2048 FLAT", "RDONLY 2048 FLAT"));

    EXPECT_NO_THROW(open_vmdk(path, Access::read_only));
    EXPECT_THROW(open_vmdk(path, Access::read_write), UnsupportedInput);
}
