#include "formats/qcow2/cluster_map.hpp"

#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

#include <algorithm>

namespace vmcrypt::qcow2 {

ClusterReferences::ClusterReferences(std::uint64_t cluster_bits, std::uint64_t file_size, const std::string& where)
    : cluster_bits_(cluster_bits), file_size_(file_size), where_(where)
{
    std::uint64_t clusters = (file_size + (1ull << cluster_bits) - 1) >> cluster_bits;
    counts_.assign(clusters, 0);
    owners_.assign(clusters, Owner::none);
}

void ClusterReferences::add_exclusive(std::uint64_t offset, std::uint64_t length, const std::string& what)
{
    add(offset, length, Owner::exclusive, what);
}

void ClusterReferences::add_compressed(std::uint64_t offset, std::uint64_t length, const std::string& what)
{
    add(offset, length, Owner::compressed, what);
}

void ClusterReferences::add(std::uint64_t offset, std::uint64_t length, Owner owner, const std::string& what)
{
    if (length == 0)
        return;
    if (offset >= file_size_)
        throw InvalidInput(where_ + ": " + what + " at " + hex(offset) + " (" + std::to_string(length) +
                           " bytes) is past the end of the file (" + std::to_string(file_size_) + " bytes)");
    std::uint64_t first = offset >> cluster_bits_;
    std::uint64_t last = (offset + length - 1) >> cluster_bits_;
    for (std::uint64_t cluster = first; cluster <= last && cluster < counts_.size(); ++cluster) {
        if (owners_[cluster] != Owner::none && (owner == Owner::exclusive || owners_[cluster] == Owner::exclusive))
            throw SharedCluster(where_ + ": " + what + " at " + hex(offset) + " overlaps cluster " +
                                std::to_string(cluster) + ", which other metadata or data already uses");
        owners_[cluster] = owner;
        ++counts_[cluster];
    }
}

CompressedCluster decode_compressed_entry(std::uint64_t entry, std::uint32_t cluster_bits)
{
    const unsigned offset_bits = 62 - (cluster_bits - 8);
    const std::uint64_t offset_mask = (1ull << offset_bits) - 1;
    const std::uint64_t sector_mask = (1ull << (cluster_bits - 8)) - 1;
    CompressedCluster cluster;
    cluster.host_offset = entry & offset_mask;
    std::uint64_t sectors = ((entry >> offset_bits) & sector_mask) + 1;
    cluster.stored_bytes = sectors * 512 - (cluster.host_offset & 511);
    return cluster;
}

namespace {

struct Walker {
    const File& file;
    const Header& header;
    ClusterReferences* references;
    const std::string& where;
    SectorNumbering numbering;
    ClusterMap map;
    std::uint64_t file_size = 0;

    std::string at(std::uint64_t l1_index, std::uint64_t l2_index) const
    {
        return "L2 table " + std::to_string(l1_index) + " entry " + std::to_string(l2_index);
    }

    void add_run(std::uint64_t host, std::uint64_t guest, std::uint64_t length)
    {
        const std::uint64_t sector = (numbering == SectorNumbering::host ? host : guest) / 512;
        if (!map.runs.empty()) {
            DataRun& last = map.runs.back();
            if (last.host_offset + last.length == host && last.first_sector + last.length / 512 == sector) {
                last.length += length;
                map.data_bytes += length;
                return;
            }
        }
        map.runs.push_back(DataRun{0, host, length, sector});
        map.data_bytes += length;
    }

    std::vector<std::uint8_t> read_table(std::uint64_t offset, std::uint64_t bytes, const std::string& what) const
    {
        std::vector<std::uint8_t> table(bytes);
        if (!file.read_exact(offset, table))
            throw InvalidInput(where + ": " + what + " at " + hex(offset) + " is past the end of the file");
        return table;
    }

    void walk_l1()
    {
        const std::uint64_t cluster_size = header.cluster_size();
        std::vector<std::uint8_t> bytes =
            read_table(header.l1_table_offset, std::uint64_t{header.l1_size} * 8, "L1 table");
        map.l1.resize(header.l1_size);
        map.l2_tables.assign(header.l1_size, 0);
        for (std::uint64_t i = 0; i < header.l1_size; ++i)
            map.l1[i] = load_be64(bytes, i * 8);

        if (references && header.l1_size > 0)
            references->add_exclusive(header.l1_table_offset, std::uint64_t{header.l1_size} * 8, "the L1 table");

        for (std::uint64_t i = 0; i < header.l1_size; ++i) {
            std::uint64_t entry = map.l1[i];
            if (entry & l1_reserved_mask)
                throw InvalidInput(where + ": L1 entry " + std::to_string(i) + " (" + hex(entry) +
                                   ") has reserved bits set; run qemu-img check -r all on the image");
            std::uint64_t l2_offset = entry & l1_offset_mask;
            if (l2_offset == 0)
                continue;
            if (l2_offset % cluster_size != 0)
                throw InvalidInput(where + ": L1 entry " + std::to_string(i) + ": L2 table offset " + hex(l2_offset) +
                                   " is not cluster-aligned");
            if (l2_offset > file_size || cluster_size > file_size - l2_offset)
                throw InvalidInput(where + ": L1 entry " + std::to_string(i) + ": L2 table at " + hex(l2_offset) +
                                   " is past the end of the file");
            map.l2_tables[i] = l2_offset;
            if (references)
                references->add_exclusive(l2_offset, cluster_size, "L2 table " + std::to_string(i));
            walk_l2(i, l2_offset);
        }
    }

    void walk_l2(std::uint64_t l1_index, std::uint64_t l2_offset)
    {
        const std::uint64_t cluster_size = header.cluster_size();
        const std::uint64_t entry_size = header.l2_entry_size();
        const std::uint64_t entries = header.l2_entries();
        const bool extended = header.extended_l2();
        const std::uint64_t subcluster_size = cluster_size / subclusters_per_cluster;
        std::uint64_t reserved = l2_reserved_mask;
        if (header.version < 3 || extended)
            reserved |= flag_zero;  // the zero flag exists only in version 3 standard entries

        std::vector<std::uint8_t> table = read_table(l2_offset, cluster_size, "L2 table " + std::to_string(l1_index));
        for (std::uint64_t j = 0; j < entries; ++j) {
            const std::uint64_t entry = load_be64(table, j * entry_size);
            const std::uint64_t bitmap = extended ? load_be64(table, j * entry_size + 8) : 0;
            const std::uint64_t guest_cluster = l1_index * entries + j;
            const bool in_guest = guest_cluster < header.guest_clusters();

            if (entry & flag_compressed) {
                CompressedCluster compressed = decode_compressed_entry(entry, header.cluster_bits);
                compressed.guest_cluster = guest_cluster;
                compressed.entry_offset = l2_offset + j * entry_size;
                if (compressed.host_offset == 0 || compressed.host_offset >= file_size)
                    throw InvalidInput(where + ": " + at(l1_index, j) + ": compressed data at " +
                                       hex(compressed.host_offset) + " is outside the file (" +
                                       std::to_string(file_size) + " bytes)");
                if (references)
                    references->add_compressed(compressed.host_offset & ~std::uint64_t{511},
                                               compressed.stored_bytes + (compressed.host_offset & 511),
                                               "compressed data of " + at(l1_index, j));
                if (in_guest) {
                    map.compressed_bytes += compressed.stored_bytes;
                    map.compressed.push_back(compressed);
                }
                continue;
            }

            if (entry & reserved)
                throw InvalidInput(where + ": " + at(l1_index, j) + " (" + hex(entry) +
                                   ") has reserved bits set; run qemu-img check -r all on the image");
            const std::uint64_t host = entry & l2_offset_mask;
            if (host != 0) {
                if (host % cluster_size != 0)
                    throw InvalidInput(where + ": " + at(l1_index, j) + ": host offset " + hex(host) +
                                       " is not cluster-aligned");
                // QEMU skips writing the zero tail of a new cluster, so a file may end inside its last
                // cluster; the missing bytes read as zeros.
                if (host >= file_size)
                    throw InvalidInput(where + ": " + at(l1_index, j) + ": data cluster at " + hex(host) +
                                       " is past the end of the file (" + std::to_string(file_size) + " bytes)");
                map.data_end = std::max(map.data_end, host + cluster_size);
                if (references)
                    references->add_exclusive(host, cluster_size, "data cluster of " + at(l1_index, j));
            }

            if (extended) {
                const std::uint32_t allocated = static_cast<std::uint32_t>(bitmap);
                const std::uint32_t zero = static_cast<std::uint32_t>(bitmap >> 32);
                if (allocated & zero)
                    throw InvalidInput(where + ": " + at(l1_index, j) + ": subcluster bitmap " + hex(bitmap) +
                                       " marks subclusters both allocated and zero");
                if (host == 0 && allocated != 0)
                    throw InvalidInput(where + ": " + at(l1_index, j) + ": subcluster bitmap " + hex(bitmap) +
                                       " marks subclusters allocated, but the cluster has no host offset");
                if (!in_guest)
                    continue;
                if (zero != 0)
                    ++map.zero_clusters;
                if (allocated != 0)
                    ++map.data_clusters;
                for (unsigned s = 0; s < subclusters_per_cluster; ++s)
                    if (allocated & (1u << s))
                        add_run(host + s * subcluster_size, guest_cluster * cluster_size + s * subcluster_size,
                                subcluster_size);
                continue;
            }

            if (!in_guest)
                continue;
            if (entry & flag_zero) {
                ++map.zero_clusters;
                continue;
            }
            if (host != 0) {
                ++map.data_clusters;
                add_run(host, guest_cluster * cluster_size, cluster_size);
            }
        }
    }
};

}  // namespace

ClusterMap walk_cluster_tables(const File& file, const Header& header, ClusterReferences* references,
                               const std::string& where, SectorNumbering numbering)
{
    Walker walker{file, header, references, where, numbering, {}, file.size()};
    walker.walk_l1();
    return std::move(walker.map);
}

}  // namespace vmcrypt::qcow2
