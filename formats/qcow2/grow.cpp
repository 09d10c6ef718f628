#include "formats/qcow2/grow.hpp"

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

#include <vector>

namespace vmcrypt::qcow2 {

namespace {

std::uint64_t l1_entries_for(const Header& header, std::uint64_t size)
{
    const std::uint64_t bytes_per_l2 = header.l2_entries() * header.cluster_size();
    return (size + bytes_per_l2 - 1) / bytes_per_l2;
}

std::uint64_t clusters_for(const Header& header, std::uint64_t bytes)
{
    return (bytes + header.cluster_size() - 1) >> header.cluster_bits;
}

// Writes size (8 bytes at 24), crypt_method (unchanged, 4 at 32), l1_size (4 at 36) and
// l1_table_offset (8 at 40): one write inside sector 0, so it leaves the old or the new values.
void write_size_fields(File& file, const Header& header)
{
    std::uint8_t fields[24];
    store_be64(fields, 0, header.size);
    store_be32(fields, 8, header.crypt_method);
    store_be32(fields, 12, header.l1_size);
    store_be64(fields, 16, header.l1_table_offset);
    file.write_exact(24, fields);
    file.sync_data();
}

}  // namespace

void check_qcow2_growable(const Header& header, std::uint64_t new_size, const std::string& where)
{
    if (new_size % 512 != 0)
        throw UnsupportedInput(where + ": the new guest size " + std::to_string(new_size) +
                               " bytes is not a multiple of 512, which qcow2 requires");
    if (l1_entries_for(header, new_size) * 8 > max_l1_bytes)
        throw UnsupportedInput(where + ": growing the image to " + std::to_string(new_size) + " bytes needs an L1 "
                               "table larger than QEMU's limit of 32 MiB; use an image with larger clusters");
}

void grow_qcow2_image(File& file, Header& header, Refcounts& refcounts, std::uint64_t new_size,
                      const std::string& where)
{
    if (header.size >= new_size)
        return;
    check_qcow2_growable(header, new_size, where);
    const std::uint64_t cluster_size = header.cluster_size();
    const std::uint64_t old_entries = header.l1_size;
    const std::uint64_t new_entries = std::max<std::uint64_t>(old_entries, l1_entries_for(header, new_size));
    const std::uint64_t old_clusters = clusters_for(header, old_entries * 8);

    Header grown = header;
    grown.size = new_size;
    grown.l1_size = static_cast<std::uint32_t>(new_entries);
    if (new_entries == old_entries) {
        fault_point("qcow2-grow-l1-written");
    } else if (old_entries > 0 && clusters_for(header, new_entries * 8) <= old_clusters) {
        // The cluster tail past the old entries is not part of the table, so it may hold stale bytes.
        const std::vector<std::uint8_t> zeros((new_entries - old_entries) * 8, 0);
        file.write_exact(header.l1_table_offset + old_entries * 8, zeros);
        file.sync_data();
        fault_point("qcow2-grow-l1-written");
    } else {
        std::vector<std::uint8_t> table(clusters_for(header, new_entries * 8) * cluster_size, 0);
        if (old_entries > 0 && !file.read_exact(header.l1_table_offset, {table.data(), old_entries * 8}))
            throw InvalidInput(where + ": L1 table is past the end of the file");
        grown.l1_table_offset = refcounts.allocate(file, table.size() >> header.cluster_bits);
        file.write_exact(grown.l1_table_offset, table);
        file.sync_data();
        fault_point("qcow2-grow-l1-written");
    }

    // COMMIT POINT: the header names the new size and the table that covers it.
    write_size_fields(file, grown);
    fault_point("qcow2-grow-header-written");

    if (grown.l1_table_offset != header.l1_table_offset && old_entries > 0)
        refcounts.set_range(file, header.l1_table_offset >> header.cluster_bits, old_clusters, 0);
    header.size = grown.size;
    header.l1_size = grown.l1_size;
    header.l1_table_offset = grown.l1_table_offset;
}

}  // namespace vmcrypt::qcow2
