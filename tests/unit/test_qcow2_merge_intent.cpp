// The qcow2 merge intent file (both schema versions), the branch image search and the guest size grow,
// on images made by qemu-img 7.2.

#include "core/error.hpp"
#include "formats/qcow2/backing_chain.hpp"
#include "formats/qcow2/grow.hpp"
#include "formats/qcow2/merge_intent.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "formats/qcow2/refcounts.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

#include <cstdlib>

using namespace vmcrypt;
using namespace vmcrypt::qcow2;
using namespace vmcrypt::test;

namespace {

TEST(Qcow2MergeIntent, RoundTripKeepsBranchFilesAndGrow)
{
    TempFolder folder;
    MergeIntent intent;
    intent.phase = MergePhase::switch_files;
    intent.strategy = MergeStrategy::commit;
    intent.base = "/d/base.qcow2";
    intent.base_format = "qcow2";
    intent.top = "/d/top.qcow2";
    intent.overlays = {"/d/top.qcow2"};
    intent.remove_files = {"/d/top.qcow2"};
    intent.branch_files = {"/d/child.qcow2", "/d/sibling.qcow2"};
    intent.grow_base_to = 134217728;
    write_merge_intent(folder / "intent", intent);

    std::optional<MergeIntent> read = read_merge_intent(folder / "intent");
    ASSERT_TRUE(read.has_value());
    EXPECT_EQ(read->phase, MergePhase::switch_files);
    EXPECT_EQ(read->branch_files, intent.branch_files);
    EXPECT_EQ(read->grow_base_to, intent.grow_base_to);
    EXPECT_TRUE(read->mentions("/d/sibling.qcow2"));
    EXPECT_FALSE(read->mentions("/d/other.qcow2"));
}

TEST(Qcow2MergeIntent, VersionOneReadsWithoutBranchesOrGrow)
{
    TempFolder folder;
    write_file(folder / "intent", R"({"schema": "vmcrypt-consolidate-qcow2/1", "phase": "copy", "strategy": "stream",
        "base": "/d/base.qcow2", "baseFormat": "qcow2", "top": "/d/top.qcow2", "overlays": ["/d/top.qcow2"],
        "removeFiles": []})");
    std::optional<MergeIntent> read = read_merge_intent(folder / "intent");
    ASSERT_TRUE(read.has_value());
    EXPECT_EQ(read->strategy, MergeStrategy::stream);
    EXPECT_TRUE(read->branch_files.empty());
    EXPECT_EQ(read->grow_base_to, 0u);
}

TEST(Qcow2MergeIntent, VersionTwoWithoutBranchFilesIsDamaged)
{
    TempFolder folder;
    write_file(folder / "intent", R"({"schema": "vmcrypt-consolidate-qcow2/2", "phase": "copy", "strategy": "commit",
        "base": "/d/base.qcow2", "baseFormat": "qcow2", "top": "/d/top.qcow2", "overlays": ["/d/top.qcow2"],
        "removeFiles": ["/d/top.qcow2"]})");
    EXPECT_THROW(read_merge_intent(folder / "intent"), InvalidInput);
}

TEST(Qcow2BranchImages, ParentsBeforeChildrenAndAbsoluteNames)
{
    TempFolder folder;
    const std::string dir = folder.path().string();
    run_command("cd " + shell_quote(dir) + " && qemu-img create -q -f qcow2 base.qcow2 1M && "
                "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
                "qemu-img create -q -f qcow2 -b " + shell_quote(dir + "/base.qcow2") + " -F qcow2 a.qcow2 && "
                "qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 && "
                "qemu-img create -q -f qcow2 other.qcow2 1M");
    BackingChain chain = open_backing_chain(folder / "top.qcow2", Access::read_only);
    std::vector<BranchImage> branches = find_branch_images(chain);
    ASSERT_EQ(branches.size(), 2u);
    EXPECT_EQ(branches[0].path, absolute_path(folder / "a.qcow2"));
    EXPECT_EQ(branches[0].backing, absolute_path(folder / "base.qcow2"));
    EXPECT_EQ(branches[1].path, absolute_path(folder / "b.qcow2"));
    EXPECT_EQ(branches[1].backing, absolute_path(folder / "a.qcow2"));
}

// Grows a qemu-img image with 4 KiB clusters (one L1 cluster covers 1 GiB) to `size` and returns
// qemu-img check's exit code and the new header.
std::pair<int, Header> grow_image(const TempFolder& folder, const std::string& size)
{
    const std::filesystem::path image = folder / "image.qcow2";
    run_command("qemu-img create -q -f qcow2 -o cluster_size=4096 " + shell_quote(image) + " 64M && "
                "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' " + shell_quote(image) + " >/dev/null");
    {
        File file = File::open(image, Access::read_write);
        Header header = parse_header(read_cluster0(file), file.size(), image.string());
        Refcounts refcounts = Refcounts::load(file, header, image.string());
        grow_qcow2_image(file, header, refcounts, std::stoull(size), image.string());
        grow_qcow2_image(file, header, refcounts, std::stoull(size), image.string());  // a second run does nothing
    }
    File file = File::open(image, Access::read_only);
    Header header = parse_header(read_cluster0(file), file.size(), image.string());
    const int code = std::system(("qemu-img check -q -f qcow2 " + shell_quote(image)).c_str());
    return {code, header};
}

TEST(Qcow2Grow, L1TableGrowsInPlace)
{
    TempFolder folder;
    auto [code, header] = grow_image(folder, "134217728");
    EXPECT_EQ(code, 0);
    EXPECT_EQ(header.size, 134217728u);
    EXPECT_EQ(header.l1_size, 64u);
}

TEST(Qcow2Grow, L1TableMovesToNewClusters)
{
    TempFolder folder;
    const std::filesystem::path image = folder / "image.qcow2";
    auto [code, header] = grow_image(folder, "3221225472");
    EXPECT_EQ(code, 0);
    EXPECT_EQ(header.size, 3221225472u);
    EXPECT_EQ(header.l1_size, 1536u);
    const std::string read = run_command("qemu-io -f qcow2 -c 'read -P 0x11 0 1M' -c 'read -P 0 1M 1M' -c 'read -P 0 3071M 1M' " +
                                         shell_quote(image) + " 2>&1");
    EXPECT_EQ(read.find("Pattern verification failed"), std::string::npos) << read;
}

TEST(Qcow2Grow, RejectsSizeNotMultipleOf512)
{
    Header header;
    header.cluster_bits = 16;
    EXPECT_THROW(check_qcow2_growable(header, 1000, "image"), UnsupportedInput);
}

}  // namespace
