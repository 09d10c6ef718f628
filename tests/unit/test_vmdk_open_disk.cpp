// Tests of format probing in open_disk() for VMDK files.

#include "core/error.hpp"
#include "formats/open_disk.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

using namespace vmcrypt;
using namespace vmcrypt::test;

TEST(VmdkOpenDisk, ProbesSparseAndDescriptor)
{
    TempFolder folder;
    run_command("qemu-img create -q -f vmdk " + shell_quote(folder / "ms.vmdk") + " 1M");
    run_command("qemu-img create -q -f vmdk -o subformat=monolithicFlat " + shell_quote(folder / "mf.vmdk") + " 1M");

    std::unique_ptr<Disk> sparse = open_disk(folder / "ms.vmdk", Access::read_only);
    EXPECT_EQ(sparse->format(), "vmdk");
    EXPECT_EQ(sparse->subformat(), "monolithicSparse");

    std::unique_ptr<Disk> flat = open_disk(folder / "mf.vmdk", Access::read_write);
    EXPECT_EQ(flat->subformat(), "monolithicFlat");
    EXPECT_EQ(flat->files().size(), 2u);
}

TEST(VmdkOpenDisk, ProbesDescriptorVariants)
{
    TempFolder folder;
    run_command("truncate -s 1M " + shell_quote(folder / "d-flat.vmdk"));
    const std::string body = "version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
                             "RW 2048 FLAT \"d-flat.vmdk\" 0\n";

    write_file(folder / "commented.vmdk", "# made by a script\n\n# Disk DescriptorFile\n" + body);
    EXPECT_EQ(open_disk(folder / "commented.vmdk", Access::read_only)->capacity(), 1u << 20);

    write_file(folder / "headerless.vmdk", body);
    EXPECT_EQ(open_disk(folder / "headerless.vmdk", Access::read_only)->capacity(), 1u << 20);
}

TEST(VmdkOpenDisk, RejectsMissingFile)
{
    TempFolder folder;
    try {
        open_disk(folder / "none.vmdk", Access::read_only);
        ADD_FAILURE() << "no exception";
    } catch (const InvalidInput& error) {
        EXPECT_NE(std::string(error.what()).find("none.vmdk: file not found"), std::string::npos) << error.what();
    }
    EXPECT_THROW(open_disk(folder.path(), Access::read_only), InvalidInput);
}

TEST(VmdkOpenDisk, RejectsTextWithoutDescriptor)
{
    TempFolder folder;
    write_file(folder / "notes.vmdk", "version=1\nthis is not a descriptor\n");
    write_file(folder / "empty.vmdk", "");
    EXPECT_THROW(open_disk(folder / "notes.vmdk", Access::read_only), UnsupportedInput);
    EXPECT_THROW(open_disk(folder / "empty.vmdk", Access::read_only), UnsupportedInput);
}
