#pragma once
// The active L1/L2 tables: where each guest cluster lives, and which host clusters they reference.
//
// Entry layouts from docs/interop/qcow2.txt (QEMU 7.2 masks in block/qcow2.h). A standard L2 entry is
// 8 bytes; with extended L2 (incompatible bit 4) it is 16 bytes, the entry plus a subcluster bitmap
// (bits 0-31 allocated, 32-63 reads as zero, 32 subclusters per cluster).

#include "core/disk.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/qcow2/header.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

inline constexpr std::uint64_t l1_offset_mask = 0x00fffffffffffe00;
inline constexpr std::uint64_t l1_reserved_mask = 0x7f000000000001ff;
inline constexpr std::uint64_t l2_offset_mask = 0x00fffffffffffe00;
inline constexpr std::uint64_t l2_reserved_mask = 0x3f000000000001fe;
inline constexpr std::uint64_t flag_copied = 1ull << 63;
inline constexpr std::uint64_t flag_compressed = 1ull << 62;
inline constexpr std::uint64_t flag_zero = 1ull << 0;
inline constexpr unsigned subclusters_per_cluster = 32;

// A compressed guest cluster. Its host bytes are [host_offset, host_offset + stored_bytes); the
// clusters that range touches each count one reference.
struct CompressedCluster {
    std::uint64_t guest_cluster = 0;
    std::uint64_t entry_offset = 0;  // file offset of the L2 entry
    std::uint64_t host_offset = 0;   // bytes, not aligned
    std::uint64_t stored_bytes = 0;  // up to the end of the entry's last 512-byte sector
};

// A host cluster that two references claim: two guest clusters, or data and metadata. qemu-img check
// -r all raises the refcount to match but keeps the sharing, so the caller names another way out.
struct SharedCluster : InvalidInput {
    explicit SharedCluster(const std::string& m) : InvalidInput(m) {}
};

// Host cluster use found by the table walk, for the refcount checks.
class ClusterReferences {
public:
    ClusterReferences(std::uint64_t cluster_bits, std::uint64_t file_size, const std::string& where);

    // Counts one reference to each cluster of [offset, offset + length) that metadata or guest data owns
    // alone. Throws InvalidInput when a cluster is past the end of the file or already referenced.
    void add_exclusive(std::uint64_t offset, std::uint64_t length, const std::string& what);
    // Counts one reference to each cluster the compressed byte range touches. Compressed clusters may
    // share a host cluster with each other, but not with anything else.
    void add_compressed(std::uint64_t offset, std::uint64_t length, const std::string& what);

    std::uint64_t count(std::uint64_t cluster) const { return cluster < counts_.size() ? counts_[cluster] : 0; }
    // True when only compressed data references the cluster (their refcount has no COPIED flag to match).
    bool compressed_only(std::uint64_t cluster) const
    {
        return cluster < owners_.size() && owners_[cluster] == Owner::compressed;
    }
    std::uint64_t clusters() const { return counts_.size(); }

private:
    enum class Owner : std::uint8_t { none, exclusive, compressed };
    void add(std::uint64_t offset, std::uint64_t length, Owner owner, const std::string& what);

    std::uint64_t cluster_bits_;
    std::uint64_t file_size_;
    std::string where_;
    std::vector<std::uint32_t> counts_;
    std::vector<Owner> owners_;
};

struct ClusterMap {
    std::vector<std::uint64_t> l1;          // raw active L1 entries
    std::vector<std::uint64_t> l2_tables;   // host offsets, one per L1 entry (0: no table)
    std::vector<DataRun> runs;              // allocated data (subclusters), guest order, host-contiguous merged
    std::vector<CompressedCluster> compressed;
    std::uint64_t data_clusters = 0;        // clusters with at least one allocated (sub)cluster of data
    std::uint64_t zero_clusters = 0;        // clusters that read as zero through the zero flag or bitmap
    std::uint64_t data_bytes = 0;           // sum of runs
    std::uint64_t compressed_bytes = 0;     // stored bytes of compressed clusters
    std::uint64_t data_end = 0;             // end of the last data cluster, which may be past the file's end
};

// The sector number a data run's units are encrypted with (DataRun::first_sector): the host offset / 512
// for LUKS (crypt method 2), the guest offset / 512 for legacy qcow AES (crypt method 1), as QEMU does.
enum class SectorNumbering { host, guest };

// Reads and validates the active L1 table and every L2 table it names. Adds every referenced host
// cluster (L2 tables, data, compressed ranges) to `references` when given. Throws InvalidInput naming
// the L1 or L2 index and the problem: reserved bits, unaligned or out-of-file offsets, an allocated and
// zero subcluster.
// Data runs are merged only where their sector numbers continue too.
ClusterMap walk_cluster_tables(const File& file, const Header& header, ClusterReferences* references,
                               const std::string& where, SectorNumbering numbering = SectorNumbering::host);

// Decodes a compressed L2 entry into host offset and stored bytes.
CompressedCluster decode_compressed_entry(std::uint64_t entry, std::uint32_t cluster_bits);

}  // namespace vmcrypt::qcow2
