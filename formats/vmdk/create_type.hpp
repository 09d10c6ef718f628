#pragma once
// The createType values vmcrypt rewrites, and the extent types each one allows.

#include <string>
#include <string_view>

namespace vmcrypt::vmdk {

enum class Layout {
    embedded_sparse,  // monolithicSparse: one sparse extent that contains its own descriptor
    split_sparse,     // twoGbMaxExtentSparse: a descriptor file and sparse extent files
    flat,             // monolithicFlat, twoGbMaxExtentFlat: a descriptor file and FLAT extent files
    vmfs,             // vmfs, vmfsThin: a descriptor file and VMFS extent files (flat, maybe thin)
};

// Returns the layout of a supported createType. Throws UnsupportedInput naming the createType and a
// way out (convert with qemu-img, consolidate snapshots) for every other value.
Layout layout_of_create_type(std::string_view create_type, std::string_view file_name);

// The type of the data extents of a layout: SPARSE, FLAT or VMFS. ZERO extents are allowed in every
// layout with a descriptor file.
std::string_view data_extent_type(Layout layout);

// Returns whether the extent type is a valid one that vmcrypt does not rewrite (VMFSSPARSE, VMFSRDM,
// VMFSRAW, SESPARSE, VSANSPARSE).
bool is_unsupported_extent_type(std::string_view type);

// The command that converts `file_name` into a monolithicSparse disk that vmcrypt supports.
std::string conversion_hint(std::string_view file_name);

}  // namespace vmcrypt::vmdk
