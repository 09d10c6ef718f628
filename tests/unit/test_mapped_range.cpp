// File mappings for the rewrite engine's reads: the bytes seen, and the one-line exit 6 when a mapped
// file shrinks under a read.

#include "core/io/file.hpp"
#include "core/io/mapped_range.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <vector>

namespace vmcrypt {
namespace {

namespace fs = std::filesystem;

class MappedRangeTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        path_ = fs::temp_directory_path() / ("vmcrypt-mapped-" + std::to_string(::getpid()) + "-" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
        bytes_.resize(3 << 20);
        std::iota(bytes_.begin(), bytes_.end(), std::uint8_t{7});
        std::ofstream(path_, std::ios::binary).write(reinterpret_cast<const char*>(bytes_.data()),
                                                    static_cast<std::streamsize>(bytes_.size()));
    }

    void TearDown() override { fs::remove(path_); }

    fs::path path_;
    std::vector<std::uint8_t> bytes_;
};

TEST_F(MappedRangeTest, ShowsBytesAtUnalignedOffset)
{
    File file = File::open(path_, Access::read_only);
    std::optional<MappedRange> mapping = MappedRange::map(file, 4096 + 512, 2 << 20, "unused");
    ASSERT_TRUE(mapping.has_value());
    ASSERT_EQ(mapping->bytes().size(), std::size_t{2} << 20);
    EXPECT_TRUE(std::equal(mapping->bytes().begin(), mapping->bytes().end(), bytes_.begin() + 4096 + 512));
}

TEST_F(MappedRangeTest, ShrunkFileExitsWithSix)
{
    File file = File::open(path_, Access::read_only);
    std::optional<MappedRange> mapping = MappedRange::map(file, 0, bytes_.size(), "disk-flat.vmdk: read failed");
    ASSERT_TRUE(mapping.has_value());

    // Truncating drops the pages behind the new end from the mapping, so touching them raises SIGBUS.
    fs::resize_file(path_, 4096);
    const volatile std::uint8_t* last = mapping->bytes().data() + bytes_.size() - 1;
    EXPECT_EXIT((void)*last, ::testing::ExitedWithCode(6), "^vmcrypt: disk-flat.vmdk: read failed\n$");
}

}  // namespace
}  // namespace vmcrypt
