// Tests of the pieces of consolidate-snapshots that need no files: merging delta layers into one view,
// replacing a descriptor value in place, and editing .vmx and .vmsd text.

#include "core/error.hpp"
#include "formats/vmdk/descriptor.hpp"
#include "formats/vmdk/guest_map.hpp"
#include "formats/vmdk/vmx_file.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

using vmcrypt::File;
using vmcrypt::vmdk::Descriptor;
using vmcrypt::vmdk::GuestRun;
using vmcrypt::vmdk::GuestRunKind;
using vmcrypt::vmdk::overlay_layers;

namespace {

// Stand-in file identities: the overlay compares File pointers, it never reads them.
const File* const older_file = reinterpret_cast<const File*>(0x1000);
const File* const newer_file = reinterpret_cast<const File*>(0x2000);

GuestRun data(std::uint64_t offset, std::uint64_t length, const File* file, std::uint64_t host)
{
    return GuestRun{offset, length, GuestRunKind::data, file, host};
}

GuestRun zero(std::uint64_t offset, std::uint64_t length)
{
    return GuestRun{offset, length, GuestRunKind::zero, nullptr, 0};
}

void expect_run(const GuestRun& run, std::uint64_t offset, std::uint64_t length, GuestRunKind kind,
                const File* file, std::uint64_t host)
{
    EXPECT_EQ(run.guest_offset, offset);
    EXPECT_EQ(run.length, length);
    EXPECT_EQ(run.kind, kind);
    if (kind == GuestRunKind::data) {
        EXPECT_EQ(run.file, file);
        EXPECT_EQ(run.host_offset, host);
    }
}

std::string read_text(const std::filesystem::path& path)
{
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

void write_text(const std::filesystem::path& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary);
    out << text;
}

class TemporaryFolder {
public:
    TemporaryFolder()
    {
        std::string pattern = (std::filesystem::temp_directory_path() / "vmcrypt-unit.XXXXXX").string();
        path_ = ::mkdtemp(pattern.data());
    }
    ~TemporaryFolder() { std::filesystem::remove_all(path_); }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

}  // namespace

TEST(ConsolidateOverlay, NewerLayerWinsInsideOlderRun)
{
    std::vector<GuestRun> view = overlay_layers({{data(0, 4096, older_file, 65536)}, {data(1024, 512, newer_file, 512)}});
    ASSERT_EQ(view.size(), 3u);
    expect_run(view[0], 0, 1024, GuestRunKind::data, older_file, 65536);
    expect_run(view[1], 1024, 512, GuestRunKind::data, newer_file, 512);
    expect_run(view[2], 1536, 2560, GuestRunKind::data, older_file, 65536 + 1536);
}

TEST(ConsolidateOverlay, ZeroedGrainHidesOlderData)
{
    std::vector<GuestRun> view = overlay_layers({{data(0, 2048, older_file, 0)}, {zero(512, 2048)}});
    ASSERT_EQ(view.size(), 2u);
    expect_run(view[0], 0, 512, GuestRunKind::data, older_file, 0);
    expect_run(view[1], 512, 2048, GuestRunKind::zero, nullptr, 0);
}

TEST(ConsolidateOverlay, OlderDataShowsWhereNewerHasNothing)
{
    std::vector<GuestRun> view =
        overlay_layers({{zero(0, 512), data(4096, 512, older_file, 8192)}, {data(1024, 512, newer_file, 0)}});
    ASSERT_EQ(view.size(), 3u);
    expect_run(view[0], 0, 512, GuestRunKind::zero, nullptr, 0);
    expect_run(view[1], 1024, 512, GuestRunKind::data, newer_file, 0);
    expect_run(view[2], 4096, 512, GuestRunKind::data, older_file, 8192);
}

TEST(ConsolidateOverlay, NewerRunCoversSeveralOlderRuns)
{
    std::vector<GuestRun> view = overlay_layers(
        {{data(0, 512, older_file, 0), data(1024, 512, older_file, 4096), data(2048, 1024, older_file, 9216)},
         {data(512, 2048, newer_file, 0)}});
    ASSERT_EQ(view.size(), 3u);
    expect_run(view[0], 0, 512, GuestRunKind::data, older_file, 0);
    expect_run(view[1], 512, 2048, GuestRunKind::data, newer_file, 0);
    expect_run(view[2], 2560, 512, GuestRunKind::data, older_file, 9216 + 512);
}

TEST(ConsolidateOverlay, ContinuingRunsMerge)
{
    std::vector<GuestRun> view = overlay_layers({{data(0, 512, older_file, 0)}, {data(512, 512, older_file, 512)}});
    ASSERT_EQ(view.size(), 1u);
    expect_run(view[0], 0, 1024, GuestRunKind::data, older_file, 0);
}

TEST(DescriptorReplaceValue, KeepsEveryOtherByte)
{
    std::string text = "# Disk DescriptorFile\r\nversion=1\r\nCID=4f680269\r\nparentCID=ffffffff\r\n"
                       "createType=\"monolithicSparse\"\r\nRW 2048 SPARSE \"a.vmdk\"\r\n"
                       "ddb.longContentID = \"0123456789abcdef012345674f680269\"\r\n";
    Descriptor descriptor = Descriptor::parse(text + std::string(64, '\0'), "a.vmdk");
    descriptor.replace_value("CID", "deadbeef");
    descriptor.replace_value("ddb.longContentID", "0123456789abcdef01234567deadbeef");

    std::string expected = text;
    expected.replace(expected.find("4f680269"), 8, "deadbeef");
    expected.replace(expected.find("4f680269"), 8, "deadbeef");
    EXPECT_EQ(descriptor.serialize(), expected + std::string(64, '\0'));
    ASSERT_TRUE(descriptor.cid().has_value());
    EXPECT_EQ(*descriptor.cid(), 0xdeadbeefu);
}

TEST(DescriptorReplaceValue, RejectsMissingKey)
{
    Descriptor descriptor =
        Descriptor::parse("version=1\ncreateType=\"monolithicFlat\"\nRW 1 FLAT \"f\" 0\n", "f.vmdk");
    EXPECT_THROW(descriptor.replace_value("CID", "00000001"), vmcrypt::InvalidInput);
}

TEST(VmxRepoint, ChangesOnlyEntriesNamingTheTop)
{
    TemporaryFolder folder;
    std::filesystem::path vmx = folder.path() / "vm.vmx";
    write_text(vmx, ".encoding = \"UTF-8\"\r\nscsi0:0.fileName = \"disk-000002.vmdk\"\r\n"
                    "scsi0:1.fileName = \"data.vmdk\"\r\nsata0:0.fileName = \"" +
                        (folder.path() / "disk-000002.vmdk").string() + "\"\r\n");

    EXPECT_TRUE(vmcrypt::vmdk::repoint_vmx_disk(vmx, folder.path() / "disk-000002.vmdk", folder.path() / "disk.vmdk"));
    EXPECT_EQ(read_text(vmx), ".encoding = \"UTF-8\"\r\nscsi0:0.fileName = \"disk.vmdk\"\r\n"
                              "scsi0:1.fileName = \"data.vmdk\"\r\nsata0:0.fileName = \"" +
                                  (std::filesystem::canonical(folder.path()) / "disk.vmdk").string() + "\"\r\n");
    EXPECT_FALSE(vmcrypt::vmdk::repoint_vmx_disk(vmx, folder.path() / "disk-000002.vmdk", folder.path() / "disk.vmdk"));
}

TEST(VmsdEmpty, DropsSnapshotsKeepsLastUid)
{
    TemporaryFolder folder;
    std::filesystem::path vmsd = folder.path() / "vm.vmsd";
    write_text(vmsd, ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"2\"\nsnapshot.current = \"2\"\n"
                     "snapshot0.uid = \"1\"\nsnapshot0.disk0.fileName = \"disk.vmdk\"\n"
                     "snapshot1.uid = \"2\"\nsnapshot.numSnapshots = \"2\"\nsnapshot.mru0.uid = \"2\"\n");

    EXPECT_TRUE(vmcrypt::vmdk::empty_snapshot_list(vmsd));
    EXPECT_EQ(read_text(vmsd), ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"2\"\nsnapshot.numSnapshots = \"0\"\n");
    EXPECT_FALSE(vmcrypt::vmdk::empty_snapshot_list(vmsd));
}

TEST(ConsolidateRemoveCovered, KeepsOnlyUncoveredParts)
{
    std::vector<GuestRun> left = vmcrypt::vmdk::remove_covered(
        {data(0, 4096, older_file, 8192), zero(8192, 1024)}, {data(1024, 1024, newer_file, 0), zero(8192, 512)});
    ASSERT_EQ(left.size(), 3u);
    expect_run(left[0], 0, 1024, GuestRunKind::data, older_file, 8192);
    expect_run(left[1], 2048, 2048, GuestRunKind::data, older_file, 8192 + 2048);
    expect_run(left[2], 8704, 512, GuestRunKind::zero, nullptr, 0);
}
