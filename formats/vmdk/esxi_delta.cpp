#include "formats/vmdk/esxi_delta.hpp"

#include "core/error.hpp"

namespace vmcrypt::vmdk {

bool is_esxi_delta_type(std::string_view create_type)
{
    return create_type == "vmfsSparse" || create_type == "seSparse";
}

std::unique_ptr<EsxiDelta> open_esxi_delta(File descriptor_file, const std::filesystem::path& path)
{
    (void)descriptor_file;
    throw UnsupportedInput(path.string() + ": ESXi deltas are not read yet");
}

}  // namespace vmcrypt::vmdk
