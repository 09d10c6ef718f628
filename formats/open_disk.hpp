#pragma once
// Format probing: the one place that knows every format.

#include "core/disk.hpp"

#include <filesystem>
#include <memory>

namespace vmcrypt {

// Opens a disk by probing its format. Read-only opens never write, create or lock anything. Throws
// UnsupportedInput for a file of no known format and InvalidInput for malformed metadata.
std::unique_ptr<Disk> open_disk(const std::filesystem::path& path, Access access);

}  // namespace vmcrypt
