#include "formats/vmdk/create_type.hpp"

#include "core/error.hpp"
#include "core/text/shell_words.hpp"

#include <algorithm>
#include <array>
#include <utility>

namespace vmcrypt::vmdk {

namespace {

// vmfsPreallocated and vmfsEagerZeroedThick differ from vmfs only in how ESXi allocated the flat file.
constexpr std::array<std::pair<std::string_view, Layout>, 10> supported = {{
    {"monolithicSparse", Layout::embedded_sparse},
    {"twoGbMaxExtentSparse", Layout::split_sparse},
    {"2GbMaxExtentSparse", Layout::split_sparse},
    {"monolithicFlat", Layout::flat},
    {"twoGbMaxExtentFlat", Layout::flat},
    {"2GbMaxExtentFlat", Layout::flat},
    {"vmfs", Layout::vmfs},
    {"vmfsThin", Layout::vmfs},
    {"vmfsPreallocated", Layout::vmfs},
    {"vmfsEagerZeroedThick", Layout::vmfs},
}};

// ESXi snapshot deltas: the data is split between this file and its parents.
constexpr std::array<std::string_view, 3> delta_types = {"vmfsSparse", "seSparse", "vsanSparse"};

// Disks whose data lives on a raw device or partition instead of in files.
constexpr std::array<std::string_view, 8> device_types = {
    "vmfsRaw", "vmfsRawDeviceMap", "vmfsRDM", "vmfsPassthroughRawDeviceMap", "vmfsRDMP",
    "fullDevice", "partitionedDevice", "custom",
};

}  // namespace

std::string conversion_hint(std::string_view file_name)
{
    return "qemu-img convert -O vmdk -o subformat=monolithicSparse " + std::string(file_name) + " new.vmdk";
}

Layout layout_of_create_type(std::string_view create_type, std::string_view file_name)
{
    for (const auto& [name, layout] : supported) {
        if (name == create_type)
            return layout;
    }

    std::string prefix = std::string(file_name) + ": createType \"" + std::string(create_type) + "\" is not supported; ";
    if (create_type == "streamOptimized")
        throw UnsupportedInput(prefix + "its grains are compressed and cannot be rewritten in place, so convert it "
                                        "first with: " + conversion_hint(file_name));
    // consolidate-snapshots reads vmfsSparse and seSparse deltas, but not vsanSparse ones.
    if (create_type == "vmfsSparse" || create_type == "seSparse")
        throw UnsupportedInput(prefix + "it is a snapshot delta, so merge the chain first with: " +
                               shell_command({"vmcrypt", "consolidate-snapshots", std::string(file_name)}));
    if (std::ranges::find(delta_types, create_type) != delta_types.end())
        throw UnsupportedInput(prefix + "it is a snapshot delta, so consolidate the snapshots on the host first, "
                                        "or convert the whole chain with: " + conversion_hint(file_name));
    if (std::ranges::find(device_types, create_type) != device_types.end())
        throw UnsupportedInput(prefix + "its data is on a raw device, not in files vmcrypt can rewrite; copy it "
                                        "into a file first with: " + conversion_hint(file_name));
    throw UnsupportedInput(prefix + "vmcrypt supports monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, "
                                    "twoGbMaxExtentFlat and the vmfs types, so convert it first with: " +
                           conversion_hint(file_name));
}

std::string_view data_extent_type(Layout layout)
{
    switch (layout) {
    case Layout::embedded_sparse:
    case Layout::split_sparse:
        return "SPARSE";
    case Layout::flat:
        return "FLAT";
    case Layout::vmfs:
        return "VMFS";
    }
    return "";
}

bool is_unsupported_extent_type(std::string_view type)
{
    return type == "VMFSSPARSE" || type == "VMFSRDM" || type == "VMFSRAW" || type == "SESPARSE" ||
           type == "VSANSPARSE";
}

}  // namespace vmcrypt::vmdk
