#include "formats/qcow2/refcount_repair.hpp"

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

#include <set>

namespace vmcrypt::qcow2 {

void check_references_knowable(const Header& header, const std::string& where)
{
    if (header.find_extension(ext_bitmaps) || (header.autoclear_features & autoclear_bitmaps))
        throw UnsupportedInput(where + ": the image has persistent dirty bitmaps, whose clusters vmcrypt does not "
                                       "track; remove them first (qemu-img info lists them; qemu-img bitmap --remove " +
                                       where + " NAME)");
    if (header.crypto_header())
        throw WrongDiskState(where + ": the image has a LUKS header area; decrypt it first");
    for (const HeaderExtension& extension : header.extensions) {
        const std::uint32_t type = extension.type;
        if (type != ext_backing_format && type != ext_feature_table)
            throw UnsupportedInput(where + ": header extension " + hex(type) + " may own clusters that vmcrypt "
                                           "cannot see, so it cannot make the refcounts exact; copy the image "
                                           "with: qemu-img convert -O qcow2");
    }
}

ClusterReferences count_active_references(const File& file, const Header& header, const Refcounts& refcounts,
                                          const std::string& where)
{
    if (header.nb_snapshots != 0)
        throw Error(ExitCode::failure, where + ": internal error: counting references of an image with snapshots");
    ClusterReferences references(header.cluster_bits, file.size(), where);
    references.add_exclusive(0, header.cluster_size(), "the header");
    refcounts.add_references(references);
    walk_cluster_tables(file, header, &references, where);
    return references;
}

void check_no_missing_refcounts(const ClusterReferences& references, const Refcounts& refcounts,
                                const std::string& where)
{
    for (std::uint64_t cluster = 0; cluster < references.clusters(); ++cluster) {
        const std::uint64_t count = references.count(cluster);
        const std::uint64_t refcount = refcounts.get(cluster);
        if (refcount < count)
            throw InvalidInput(where + ": refcount of cluster " + std::to_string(cluster) + " is " +
                               std::to_string(refcount) + " but " + std::to_string(count) +
                               " references use it; repair the image with: qemu-img check -r all " + where);
    }
}

namespace {

// Sets the COPIED flag of each L1 entry and of each L2 entry with a host cluster (not compressed) to
// (refcount == 1), writing only the 512-byte sectors that change. Returns the entries changed.
std::uint64_t fix_copied_flags(File& file, const Header& header, const Refcounts& refcounts)
{
    const std::uint64_t cluster_size = header.cluster_size();
    const std::uint64_t entry_size = header.l2_entry_size();
    std::uint64_t changed = 0;

    std::vector<std::uint8_t> l1(std::uint64_t{header.l1_size} * 8);
    if (!l1.empty() && !file.read_exact(header.l1_table_offset, l1))
        throw InvalidInput("L1 table is past the end of the file");
    std::set<std::uint64_t> l1_sectors;
    std::vector<std::uint8_t> table(cluster_size);
    for (std::uint64_t i = 0; i < header.l1_size; ++i) {
        std::uint64_t l1_entry = load_be64(l1, i * 8);
        const std::uint64_t l2_offset = l1_entry & l1_offset_mask;
        if (l2_offset == 0)
            continue;
        const bool copied = refcounts.get(l2_offset >> header.cluster_bits) == 1;
        if (((l1_entry & flag_copied) != 0) != copied) {
            store_be64(l1, i * 8, copied ? (l1_entry | flag_copied) : (l1_entry & ~flag_copied));
            l1_sectors.insert(i * 8 / 512);
            ++changed;
        }

        if (!file.read_exact(l2_offset, table))
            throw InvalidInput("L2 table " + std::to_string(i) + " is past the end of the file");
        std::set<std::uint64_t> sectors;
        for (std::uint64_t j = 0; j < header.l2_entries(); ++j) {
            const std::uint64_t entry = load_be64(table, j * entry_size);
            const std::uint64_t host = entry & l2_offset_mask;
            if ((entry & flag_compressed) || host == 0)
                continue;
            const bool data_copied = refcounts.get(host >> header.cluster_bits) == 1;
            if (((entry & flag_copied) != 0) == data_copied)
                continue;
            store_be64(table, j * entry_size, data_copied ? (entry | flag_copied) : (entry & ~flag_copied));
            sectors.insert(j * entry_size / 512);
            ++changed;
        }
        for (std::uint64_t sector : sectors)
            file.write_exact(l2_offset + sector * 512, {table.data() + sector * 512, 512});
    }
    for (std::uint64_t sector : l1_sectors) {
        const std::size_t begin = static_cast<std::size_t>(sector * 512);
        const std::size_t length = std::min<std::size_t>(512, l1.size() - begin);
        file.write_exact(header.l1_table_offset + begin, {l1.data() + begin, length});
    }
    if (changed != 0)
        file.sync_data();
    return changed;
}

}  // namespace

RefcountRepair make_refcounts_exact(File& file, const Header& header, Refcounts& refcounts, const std::string& where)
{
    RefcountRepair repair;
    ClusterReferences references = count_active_references(file, header, refcounts, where);
    check_no_missing_refcounts(references, refcounts, where);

    const std::uint64_t end = std::max(refcounts.end_of_used_clusters(), references.clusters());
    for (std::uint64_t cluster = 0; cluster < end; ++cluster) {
        const std::uint64_t count = references.count(cluster);
        if (refcounts.get(cluster) > count) {
            refcounts.set(cluster, count);
            ++repair.lowered;
        }
    }
    refcounts.flush(file);
    fault_point("qcow2-refcounts-lowered");

    repair.flags_changed = fix_copied_flags(file, header, refcounts);
    fault_point("qcow2-copied-flags-fixed");
    return repair;
}

void drop_snapshot_table(File& file, Header& header)
{
    // nb_snapshots (4 bytes at 60) and snapshots_offset (8 bytes at 64) share sector 0: one atomic write.
    std::uint8_t fields[12] = {};
    file.write_exact(60, fields);
    file.sync_data();
    // COMMIT POINT: no snapshot exists any more; the clusters only snapshots used are leaked.
    fault_point("qcow2-snapshot-table-dropped");
    header.nb_snapshots = 0;
    header.snapshots_offset = 0;
}

}  // namespace vmcrypt::qcow2
