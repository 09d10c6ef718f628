#pragma once
// ESXi snapshot deltas: a descriptor file with createType "vmfsSparse" (VMFSSPARSE extents in the COWD
// format) or "seSparse" (SESPARSE extents), read only to merge them into their base.

#include "core/io/file.hpp"
#include "formats/vmdk/descriptor.hpp"
#include "formats/vmdk/guest_map.hpp"

#include <filesystem>
#include <memory>
#include <vector>

namespace vmcrypt::vmdk {

struct EsxiDelta {
    Descriptor descriptor;
    std::vector<std::unique_ptr<File>> files;  // the descriptor file first, then one per extent
    std::uint64_t capacity_sectors = 0;
    std::vector<GuestRun> runs;                // allocated and zero grains, in guest order
};

// Returns whether `create_type` names an ESXi delta that open_esxi_delta() reads.
bool is_esxi_delta_type(std::string_view create_type);

// Opens the delta whose descriptor file is `descriptor_file` (read from `path`), opens its extent files
// with the same access and reads their grain directories. Throws InvalidInput naming the file and the
// header field or grain entry at fault, and UnsupportedInput for features it does not read.
std::unique_ptr<EsxiDelta> open_esxi_delta(File descriptor_file, const std::filesystem::path& path);

}  // namespace vmcrypt::vmdk
