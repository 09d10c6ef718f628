#pragma once
// Writing the composed guest pieces of a chain into its base: a qcow2 image or a raw file.
//
// Every write is idempotent: the pieces come from the overlays, which do not change, and base bytes
// that no piece covers are kept, so running the merge again gives the same base. Only guest ranges that
// an overlay defines are written, so the chain's top reads the same throughout.
//
// qcow2 order per batch of clusters, as QEMU orders cluster allocation (a crash leaks at worst):
//   new clusters allocated (refcounts durable) -> data written and synced -> L2 entries (new L2 tables
//   are still unreferenced) synced -> L1 entries for new L2 tables synced -> refcounts of clusters no
//   longer referenced (replaced compressed or shared clusters) lowered.

#include "core/io/file.hpp"
#include "formats/qcow2/guest_view.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/refcounts.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

// Called after each durable batch with the guest bytes done; may throw to stop between batches.
using MergeProgress = std::function<void(std::uint64_t done)>;

// Writes `pieces` into the qcow2 base `file`. The base must have no backing file and no internal
// snapshots, and its refcounts must be exact (make_refcounts_exact()).
void merge_into_qcow2(File& file, const Header& header, Refcounts& refcounts, const std::string& where,
                      const std::vector<GuestPiece>& pieces, PieceReader& reader, const MergeProgress& progress);

// Writes `pieces` into the raw base `file`: data as is, zero ranges as holes where the file system
// punches them, else as written zeros. Syncs at the end.
void merge_into_raw(File& file, const std::vector<GuestPiece>& pieces, PieceReader& reader,
                    const MergeProgress& progress);

}  // namespace vmcrypt::qcow2
