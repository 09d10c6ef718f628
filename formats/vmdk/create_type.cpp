#include "formats/vmdk/create_type.hpp"

#include "core/error.hpp"
#include "core/text/shell_words.hpp"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

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

// Levenshtein distance, for the suggestion after a misspelt createType.
std::size_t edit_distance(std::string_view a, std::string_view b)
{
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

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
    // qemu-img 7.2 reads none of these either, so no qemu-img command is offered.
    if (std::ranges::find(delta_types, create_type) != delta_types.end())
        throw UnsupportedInput(prefix + "it is a vSAN snapshot delta, so consolidate the snapshots on the ESXi host "
                                        "first");
    if (std::ranges::find(device_types, create_type) != device_types.end())
        throw UnsupportedInput(prefix + "its data is on a raw device, not in files vmcrypt can rewrite; clone it into "
                                        "a virtual disk file on the ESXi host first (vmkfstools -i)");
    // Every createType of VMware's Virtual Disk Format 5.0 is handled above, so this one comes from an
    // edited descriptor.
    std::string suggestion;
    for (const auto& [name, layout] : supported)
        if (edit_distance(name, create_type) <= 2)
            suggestion = std::string(name);
    throw UnsupportedInput(std::string(file_name) + ": createType \"" + std::string(create_type) +
                           "\" in the descriptor is not a VMDK createType that vmcrypt or qemu-img knows; correct "
                           "the createType line to the type the disk was made with, " +
                           (suggestion.empty() ? std::string("which its extent lines show (SPARSE or FLAT, one file or "
                                                             "several)")
                                               : "probably \"" + suggestion + "\""));
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
