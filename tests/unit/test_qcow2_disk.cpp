// qcow2 images made by qemu-img 7.2 in every layout vmcrypt supports: the data runs must cover
// exactly the host ranges that qemu-img map reports as data, with QEMU's LUKS tweak (host offset / 512).

#include "formats/open_disk.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>

using namespace vmcrypt;
using namespace vmcrypt::test;

namespace {

struct HostRange {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool operator==(const HostRange&) const = default;
};

std::ostream& operator<<(std::ostream& out, const HostRange& range)
{
    return out << "{host " << range.offset << ", length " << range.length << "}";
}

std::vector<HostRange> sorted_merged(std::vector<HostRange> ranges)
{
    std::sort(ranges.begin(), ranges.end(), [](const HostRange& a, const HostRange& b) { return a.offset < b.offset; });
    std::vector<HostRange> merged;
    for (const HostRange& range : ranges) {
        if (!merged.empty() && merged.back().offset + merged.back().length == range.offset)
            merged.back().length += range.length;
        else
            merged.push_back(range);
    }
    return merged;
}

// Host ranges that qemu-img map reports as data ("data" true, with an offset). "zero" is ignored: qemu
// sets it also for allocated data that reads as zero because the host file has a hole there.
std::vector<HostRange> qemu_host_ranges(const std::filesystem::path& image)
{
    nlohmann::json entries = nlohmann::json::parse(run_command("qemu-img map -f qcow2 --output=json " + shell_quote(image)));
    std::vector<HostRange> ranges;
    for (const nlohmann::json& entry : entries)
        if (entry.at("data").get<bool>() && entry.contains("offset"))
            ranges.push_back({entry.at("offset").get<std::uint64_t>(), entry.at("length").get<std::uint64_t>()});
    return sorted_merged(ranges);
}

std::filesystem::path make_written_image(const TempFolder& folder, const std::string& options)
{
    std::filesystem::path path = folder / "d.qcow2";
    run_command("qemu-img create -q -f qcow2 -o " + options + " " + shell_quote(path) + " 64M");
    run_command("qemu-io -f qcow2 -c 'write -P 0x11 0 512' -c 'write -P 0x22 4096 4096' -c 'write -P 0x33 1M 3M' "
                "-c 'write -z 8M 1M' -c 'write -P 0x44 67108352 512' -c 'write -P 0x55 40M 100k' " +
                shell_quote(path));
    return path;
}

}  // namespace

TEST(Qcow2Disk, DataRunsMatchQemuMap)
{
    const std::vector<std::string> layouts = {
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=2M",
        "compat=0.10",
        "extended_l2=on",
        "extended_l2=on,cluster_size=2M",
        "lazy_refcounts=on",
        "refcount_bits=1",
        "refcount_bits=64",
        "preallocation=metadata",
        "preallocation=full,cluster_size=1M",
    };
    for (const std::string& layout : layouts) {
        SCOPED_TRACE(layout);
        TempFolder folder;
        std::filesystem::path path = make_written_image(folder, layout);
        std::vector<HostRange> expected = qemu_host_ranges(path);  // before vmcrypt takes the image lock
        std::unique_ptr<Disk> disk = open_disk(path, Access::read_write);
        EXPECT_EQ(disk->format(), "qcow2");
        EXPECT_EQ(disk->tweak_rule(), "host-sector");

        std::vector<HostRange> runs;
        for (const DataRun& run : disk->data_runs()) {
            EXPECT_EQ(run.first_sector, run.host_offset / 512);
            EXPECT_EQ(run.host_offset % 512, 0u);
            runs.push_back({run.host_offset, run.length});
        }
        EXPECT_EQ(sorted_merged(runs), expected);
    }
}

TEST(Qcow2Disk, CompressedClustersAreListed)
{
    for (const std::string type : {"zlib", "zstd"}) {
        SCOPED_TRACE(type);
        TempFolder folder;
        std::filesystem::path raw = folder / "d.raw";
        std::filesystem::path path = folder / "d.qcow2";
        run_command("qemu-img create -q -f raw " + shell_quote(raw) + " 8M");
        run_command("qemu-io -f raw -c 'write -P 0x61 0 2M' -c 'write -P 0x62 4M 1M' " + shell_quote(raw));
        run_command("qemu-img convert -c -f raw -O qcow2 -o compression_type=" + type + " " + shell_quote(raw) + " " +
                    shell_quote(path));
        std::unique_ptr<Disk> disk = open_disk(path, Access::read_only);
        auto* image = dynamic_cast<qcow2::QcowDisk*>(disk.get());
        ASSERT_NE(image, nullptr);
        EXPECT_EQ(image->cluster_map().compressed.size(), 48u);
        EXPECT_TRUE(disk->data_runs().empty());
    }
}
