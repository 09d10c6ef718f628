#pragma once
// Growing the guest size of a qcow2 image without a backing file, as qemu-img resize does without
// preallocation: the header gets the new size, and the L1 table gets (zero) entries for it.
//
// Write order, so that a crash leaks clusters at worst and never leaves a header naming a table that is
// not fully written:
//   L1 table fits in its clusters: the new entries are zeroed and synced, then one write of header
//     sector 0 sets size and l1_size (the commit point).
//   L1 table must move: new clusters are allocated (refcounts durable), the whole new table is written
//     and synced, then one write of header sector 0 sets size, l1_size and l1_table_offset (the commit
//     point), then the old table's clusters are released. A crash before the header write leaks the
//     new clusters; one after it leaks the old ones until their refcounts drop.
// Fault points: qcow2-grow-l1-written (before the header write), qcow2-grow-header-written (after it).

#include "core/io/file.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/refcounts.hpp"

#include <cstdint>
#include <string>

namespace vmcrypt::qcow2 {

// Rejects a new size that grow_qcow2_image() cannot give the image: one that is not a multiple of 512
// bytes (QEMU rejects those) or whose L1 table would be larger than QEMU's 32 MiB limit. Writes nothing.
void check_qcow2_growable(const Header& header, std::uint64_t new_size, const std::string& where);

// Grows the image to `new_size` guest bytes and updates `header` to match. Idempotent: an image that
// is already that large is left alone. The image must have no internal snapshots, and `refcounts`
// must be exact (make_refcounts_exact()).
void grow_qcow2_image(File& file, Header& header, Refcounts& refcounts, std::uint64_t new_size,
                      const std::string& where);

}  // namespace vmcrypt::qcow2
