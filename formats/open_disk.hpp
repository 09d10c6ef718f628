#pragma once
// Format probing: the one place that knows every format.

#include "core/disk.hpp"

#include <filesystem>
#include <memory>

namespace vmcrypt {

// Opens a disk by probing its format. Read-only opens never write, create or lock anything. Throws
// UnsupportedInput for a file of no known format and InvalidInput for malformed metadata.
std::unique_ptr<Disk> open_disk(const std::filesystem::path& path, Access access);

// Checks, reading only, that `path` is a file of a known disk format: a VMDK descriptor or extent
// (ESXi delta extents too) or a qcow2 image. Throws the same errors as open_disk() for a missing
// path, a folder or a file of no known format.
void check_disk_file(const std::filesystem::path& path);

}  // namespace vmcrypt
