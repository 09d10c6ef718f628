// unallocated_bytes() against files whose holes and preallocated ranges the test makes itself, and
// check_free_space() against the real free space of the temporary folder's file system.

#include "core/error.hpp"
#include "core/io/free_space.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <sys/statvfs.h>
#include <vector>

using namespace vmcrypt;
using namespace vmcrypt::test;

namespace {

constexpr std::uint64_t KiB = 1024;

// A 1 MiB file with data at [0, 64K) and [512K, 576K); the rest is a hole.
File make_sparse_file(const TempFolder& folder)
{
    File file = File::create_new(folder / "sparse.bin", 0600);
    const std::vector<std::uint8_t> data(64 * KiB, 0x5a);
    file.write_exact(0, data);
    file.write_exact(512 * KiB, data);
    file.truncate(1024 * KiB);
    file.sync_all();
    return file;
}

TEST(FreeSpace, HolesInsideTheFile)
{
    TempFolder folder;
    File file = make_sparse_file(folder);
    EXPECT_EQ(unallocated_bytes(file, 0, 1024 * KiB), (1024 - 128) * KiB);
    EXPECT_EQ(unallocated_bytes(file, 0, 64 * KiB), 0u);
    EXPECT_EQ(unallocated_bytes(file, 32 * KiB, 512 * KiB), (512 - 64) * KiB);
}

TEST(FreeSpace, RangePastTheEnd)
{
    TempFolder folder;
    File file = make_sparse_file(folder);
    // 448 KiB of the range lie in the file's tail hole, 576 KiB past its end.
    EXPECT_EQ(unallocated_bytes(file, 576 * KiB, 1024 * KiB), 1024 * KiB);
    EXPECT_EQ(unallocated_bytes(file, 2048 * KiB, 64 * KiB), 64 * KiB);
}

// On tmpfs a file with a page for every page of its size is known to have no holes without a
// SEEK_HOLE scan, which visits every page there. A file with a hole is scanned as before.
TEST(FreeSpace, TmpfsFileWithoutHoles)
{
    struct statfs shm {};
    if (::statfs("/dev/shm", &shm) != 0 || shm.f_type != TMPFS_MAGIC)
        GTEST_SKIP() << "/dev/shm is not a tmpfs here";
    TempFolder folder("/dev/shm");
    File file = File::create_new(folder / "full.bin", 0600);
    const std::vector<std::uint8_t> data(1024 * KiB + 100, 0x5a);
    file.write_exact(0, data);
    EXPECT_TRUE(file.known_without_holes());
    EXPECT_EQ(unallocated_bytes(file, 0, 2048 * KiB), 2048 * KiB - data.size());
    EXPECT_EQ(unallocated_bytes(file, 4 * KiB, 64 * KiB), 0u);

    file.truncate(2048 * KiB);  // a hole at the end
    EXPECT_FALSE(file.known_without_holes());
    EXPECT_EQ(unallocated_bytes(file, 0, 2048 * KiB), 2048 * KiB - 1028 * KiB);

    File sparse = make_sparse_file(folder);
    EXPECT_FALSE(sparse.known_without_holes());
    EXPECT_EQ(unallocated_bytes(sparse, 0, 1024 * KiB), (1024 - 128) * KiB);

    TempFolder disk_folder;
    File elsewhere = File::create_new(disk_folder / "full.bin", 0600);
    elsewhere.write_exact(0, data);
    struct statfs other {};
    if (::statfs(disk_folder.path().c_str(), &other) == 0 && other.f_type != TMPFS_MAGIC) {
        EXPECT_FALSE(elsewhere.known_without_holes());
    }
}

TEST(FreeSpace, PreallocatedRangeCountsAsAllocated)
{
    TempFolder folder;
    File file = make_sparse_file(folder);
    if (::fallocate(file.fd(), FALLOC_FL_KEEP_SIZE, 128 * KiB, 128 * KiB) != 0)
        GTEST_SKIP() << "fallocate is not supported on " << folder.path();
    // FIEMAP reports the unwritten extent; where the file system has no FIEMAP, SEEK_HOLE decides,
    // and tmpfs reports preallocated pages as data as well.
    EXPECT_EQ(unallocated_bytes(file, 0, 1024 * KiB), (1024 - 256) * KiB);
}

TEST(FreeSpace, CheckPassesWithinTheFreeSpace)
{
    TempFolder folder;
    EXPECT_NO_THROW(check_free_space({{folder / "new.file", 4096, "a test file"}}, "disk", "encrypt"));
}

TEST(FreeSpace, CheckFailsBeyondTheFreeSpace)
{
    TempFolder folder;
    struct statvfs info {};
    ASSERT_EQ(::statvfs(folder.path().c_str(), &info), 0);
    const std::uint64_t total = static_cast<std::uint64_t>(info.f_blocks) * info.f_frsize;
    // Two demands on one file system, each within its free space, together beyond its size.
    try {
        check_free_space({{folder / "a", total / 2 + 4096, "part a"}, {folder / "b", total / 2 + 4096, "part b"}},
                         "disk.qcow2", "encrypt");
        FAIL() << "expected FreeSpaceCheckFailed";
    } catch (const FreeSpaceCheckFailed& e) {
        const std::string message = e.what();
        EXPECT_EQ(e.code(), ExitCode::io_error);
        EXPECT_NE(message.find("disk.qcow2: not enough free space for the encrypt"), std::string::npos) << message;
        EXPECT_NE(message.find("part a " + std::to_string(total / 2 + 4096)), std::string::npos) << message;
        EXPECT_NE(message.find("part b"), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
}

}  // namespace
