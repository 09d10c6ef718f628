#pragma once
// Exact refcounts for an image without internal snapshots, and deleting internal snapshots.
//
// Without snapshots (and without bitmaps, the only other owner of clusters) every cluster's use is
// known: the header, the refcount table and blocks, the active L1 and L2 tables and the data they
// name. A refcount above that count is a leak, which this code lowers; a refcount below it is damage,
// which it rejects. COPIED flags then follow QEMU's rule: set exactly when the refcount is 1.
//
// Deleting the snapshots drops the snapshot table from the header in one sector write (COMMIT POINT),
// after which every cluster that only snapshots used is leaked, and clusters they shared with the
// active state have a refcount one too high. Making the refcounts exact then frees them. A crash at
// any point therefore leaves leaks, and a re-run (which always makes the refcounts exact) removes them.
// NOTE: between lowering a shared cluster's refcount to 1 and setting its COPIED flag, qemu-img check
// reports an OFLAG_COPIED error; QEMU's own snapshot delete has the same window, and QEMU copies such a
// cluster on its next write, which is safe. A re-run sets the flags.

#include "core/io/file.hpp"
#include "formats/qcow2/cluster_map.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/refcounts.hpp"
#include "formats/qcow2/snapshots.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

// Rejects an image whose clusters vmcrypt cannot all account for: persistent bitmaps, a LUKS area, or
// header extensions it does not know. Throws UnsupportedInput naming the fix.
void check_references_knowable(const Header& header, const std::string& where);

// Counts every reference of an image without internal snapshots (see above).
ClusterReferences count_active_references(const File& file, const Header& header, const Refcounts& refcounts,
                                          const std::string& where);

// Throws InvalidInput when a cluster's refcount is below its reference count. Writes nothing.
void check_no_missing_refcounts(const ClusterReferences& references, const Refcounts& refcounts,
                                const std::string& where);

struct RefcountRepair {
    std::uint64_t lowered = 0;        // clusters whose refcount was above their reference count
    std::uint64_t flags_changed = 0;  // L1 and L2 entries whose COPIED flag was changed
};

// Lowers leaked refcounts, then sets COPIED flags to match (see the NOTE above). The image must have no
// internal snapshots.
RefcountRepair make_refcounts_exact(File& file, const Header& header, Refcounts& refcounts, const std::string& where);

// Removes the snapshot table from the header (nb_snapshots 0), in one write of header sector 0, then
// updates `header`. Its clusters leak until make_refcounts_exact() runs.
void drop_snapshot_table(File& file, Header& header);

}  // namespace vmcrypt::qcow2
