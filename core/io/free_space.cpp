#include "core/io/free_space.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <map>
#include <optional>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace vmcrypt {

namespace {

// Allocated bytes of [begin, end) by FIEMAP, or nullopt when the file system does not support it.
// Unwritten (preallocated) and delayed-allocation extents own their blocks already, so they count.
// Shared extents (a reflink copy on XFS or Btrfs) do not, because a write gives the file its own
// blocks. NOTE: the tests have no reflink file system, so that branch has not run.
// NOTE: on Btrfs every overwrite allocates new blocks before it frees the old ones, which this does
// not count.
std::optional<std::uint64_t> fiemap_allocated(const File& file, std::uint64_t begin, std::uint64_t end)
{
    constexpr std::size_t batch = 256;
    std::vector<std::uint8_t> storage(sizeof(fiemap) + batch * sizeof(fiemap_extent));
    auto* map = reinterpret_cast<fiemap*>(storage.data());

    std::uint64_t allocated = 0;
    std::uint64_t position = begin;
    while (position < end) {
        std::fill(storage.begin(), storage.end(), std::uint8_t{0});
        map->fm_start = position;
        map->fm_length = end - position;
        map->fm_extent_count = batch;
        if (::ioctl(file.fd(), FS_IOC_FIEMAP, map) != 0) {
            if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL)
                return std::nullopt;
            throw IoError(file.path().string() + ": FIEMAP failed: " + std::strerror(errno));
        }
        if (map->fm_mapped_extents == 0)
            break;
        bool last = false;
        for (std::uint32_t i = 0; i < map->fm_mapped_extents; ++i) {
            const fiemap_extent& extent = map->fm_extents[i];
            const std::uint64_t extent_begin = extent.fe_logical;
            const std::uint64_t extent_end = extent_begin + extent.fe_length;
            const std::uint64_t from = std::max(position, extent_begin);
            const std::uint64_t to = std::min(end, extent_end);
            if (to > from && (extent.fe_flags & FIEMAP_EXTENT_SHARED) == 0)
                allocated += to - from;
            position = std::max(position, extent_end);
            last = last || (extent.fe_flags & FIEMAP_EXTENT_LAST) != 0;
        }
        if (last)
            break;
    }
    return allocated;
}

std::uint64_t seek_allocated(const File& file, std::uint64_t begin, std::uint64_t end)
{
    if (file.known_without_holes())
        return std::min(end, std::max(begin, file.size())) - begin;
    std::uint64_t allocated = 0;
    std::uint64_t position = begin;
    while (position < end) {
        const std::uint64_t data = file.next_data(position);
        if (data >= end)
            break;
        const std::uint64_t hole = std::min(end, file.next_hole(data));
        allocated += hole - data;
        position = hole;
    }
    return allocated;
}

struct FileSystemDemand {
    std::filesystem::path example;  // a folder on the file system, for the message
    std::uint64_t total = 0;
    std::vector<std::pair<std::string, std::uint64_t>> parts;
};

// The path to stat for a demand: the file itself, or its folder when the file does not exist yet.
std::filesystem::path existing_path(const std::filesystem::path& path)
{
    std::error_code ec;
    if (std::filesystem::exists(path, ec))
        return path;
    const std::filesystem::path parent = path.parent_path();
    return parent.empty() ? std::filesystem::path(".") : parent;
}

std::string mebibytes(std::uint64_t bytes)
{
    char text[40];
    std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
    return text;
}

}  // namespace

std::uint64_t unallocated_bytes(const File& file, std::uint64_t offset, std::uint64_t length)
{
    const std::uint64_t size = file.size();
    const std::uint64_t end = offset + length;
    const std::uint64_t past_end = end > size ? end - std::max(offset, size) : 0;
    const std::uint64_t inside_end = std::min(end, size);
    if (offset >= inside_end)
        return past_end;

    std::optional<std::uint64_t> allocated = fiemap_allocated(file, offset, inside_end);
    if (!allocated)
        allocated = seek_allocated(file, offset, inside_end);
    return (inside_end - offset) - std::min(*allocated, inside_end - offset) + past_end;
}

void check_free_space(const std::vector<SpaceDemand>& demands, const std::string& where, const std::string& operation)
{
    std::map<dev_t, FileSystemDemand> by_device;
    for (const SpaceDemand& demand : demands) {
        if (demand.bytes == 0)
            continue;
        const std::filesystem::path target = existing_path(demand.path);
        struct stat st {};
        if (::stat(target.c_str(), &st) != 0)
            throw IoError(target.string() + ": stat failed: " + std::strerror(errno));
        FileSystemDemand& fs = by_device[st.st_dev];
        if (fs.example.empty())
            fs.example = std::filesystem::is_directory(target) ? target : target.parent_path();
        fs.total += demand.bytes;
        fs.parts.emplace_back(demand.purpose, demand.bytes);
    }

    for (const auto& [device, fs] : by_device) {
        struct statvfs info {};
        if (::statvfs(fs.example.c_str(), &info) != 0)
            throw IoError(fs.example.string() + ": statvfs failed: " + std::strerror(errno));
        // Only root may use the blocks reserved for it (ext4's 5 percent by default).
        const std::uint64_t blocks = ::geteuid() == 0 ? info.f_bfree : info.f_bavail;
        const std::uint64_t available = blocks * info.f_frsize;
        if (fs.total <= available)
            continue;

        std::string parts;
        for (const auto& [purpose, bytes] : fs.parts)
            parts += (parts.empty() ? "" : ", ") + purpose + " " + std::to_string(bytes);
        throw FreeSpaceCheckFailed(where + ": not enough free space for the " + operation + " on the file system of " +
                      fs.example.string() + ": it needs " + std::to_string(fs.total) + " bytes (" +
                      mebibytes(fs.total) + ": " + parts + ") but " + std::to_string(available) + " bytes (" +
                      mebibytes(available) + ") are available; free " + std::to_string(fs.total - available) +
                      " bytes there, or move the disk to a larger file system, and run the command again; "
                      "nothing was written");
    }
}

}  // namespace vmcrypt
