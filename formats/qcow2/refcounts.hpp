#pragma once
// The refcount table and refcount blocks, and cluster allocation on top of them.
//
// A refcount block is one cluster of cluster_size * 8 / refcount_bits entries, packed big-endian for
// 8 to 64 bits and least significant bits first for 1, 2 and 4 bits (as QEMU packs them). The table
// lists the block offsets; entry 0 means "no block", so all refcounts it would hold are 0.
//
// Every change is written in QEMU's order, so that a crash at any point leaks clusters at worst and
// never leaves a reference to a cluster whose refcount is 0:
//   allocation: new refcount block -> table entry -> refcounts of the new clusters (all synced), and only
//               then may the caller write the data and the table entry that points at them;
//   release:    the caller first removes the pointer, then the refcounts drop.

#include "core/io/file.hpp"
#include "formats/qcow2/cluster_map.hpp"
#include "formats/qcow2/header.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace vmcrypt::qcow2 {

class Refcounts {
public:
    // Reads and validates the table and every block it names. Throws InvalidInput naming the table
    // index for reserved bits, unaligned offsets and blocks past the end of the file.
    static Refcounts load(const File& file, const Header& header, const std::string& where);

    std::uint64_t get(std::uint64_t cluster) const;
    std::uint64_t max_value() const;
    std::uint64_t entries_per_block() const { return entries_per_block_; }
    // Clusters the refcount structures describe (table entries times block entries).
    std::uint64_t covered_clusters() const { return table_.size() * entries_per_block_; }

    // Adds the table and block clusters to the reference counts.
    void add_references(ClusterReferences& references) const;

    // Allocates `count` contiguous free clusters (refcount 0, or past every block) and durably sets
    // their refcount to 1, creating refcount blocks and a larger table as needed. Returns the byte
    // offset of the first cluster. The file must be open read-write.
    std::uint64_t allocate(File& file, std::uint64_t count);

    // Durably sets the refcount of each cluster in [first, first + count) to `value`; every cluster
    // must already have a refcount block. Used to release clusters (value 0) and to repair leaks.
    void set_range(File& file, std::uint64_t first, std::uint64_t count, std::uint64_t value);

    // Changes one refcount in memory; flush() writes it. The cluster must have a refcount block.
    void set(std::uint64_t cluster, std::uint64_t value);

    // Writes the changed sectors of refcount blocks and syncs the file.
    void flush(File& file);

    // The first cluster after the file's end and after every cluster whose refcount is not 0.
    std::uint64_t end_of_used_clusters() const;

    // Bytes of the refcount blocks held in memory, the cost of a copy.
    std::uint64_t block_bytes() const;

    // Does what allocate() does to these refcounts in memory only, for planning on a copy. Returns the
    // clusters taken, [first, end) with the new refcount blocks, or nullopt when the refcount table would
    // have to grow.
    std::optional<std::pair<std::uint64_t, std::uint64_t>> allocate_in_memory(std::uint64_t count);

private:
    // The placement of `count` clusters by allocate(): the run start and the refcount blocks it lacks,
    // or the table entries needed when the table must grow first.
    struct AllocationPlan {
        std::uint64_t start = 0;
        std::vector<std::uint64_t> missing;
        std::uint64_t table_entries_needed = 0;
    };
    AllocationPlan plan_allocation(std::uint64_t count) const;
    // Sets the refcounts and block entries of `plan` in memory; returns the end of the run.
    std::uint64_t reserve(const AllocationPlan& plan, std::uint64_t count);

    Refcounts() = default;
    bool has_block(std::uint64_t block_index) const;
    std::uint64_t find_free_run(std::uint64_t count, std::uint64_t start) const;
    void grow_table(File& file, std::uint64_t needed_entries);

    std::string where_;
    std::uint32_t cluster_bits_ = 16;
    std::uint32_t refcount_order_ = 4;
    std::uint64_t entries_per_block_ = 0;
    std::uint64_t table_offset_ = 0;
    std::uint64_t table_clusters_ = 0;
    std::uint64_t file_clusters_ = 0;         // clusters of the file when loaded, grown by allocations
    std::vector<std::uint64_t> table_;        // block offsets
    std::vector<std::vector<std::uint8_t>> blocks_;  // parallel to table_; empty for no block
    std::map<std::uint64_t, std::set<std::uint64_t>> dirty_sectors_;  // block index -> 512-byte sectors
    std::uint64_t free_hint_ = 0;             // no free cluster below this index
};

}  // namespace vmcrypt::qcow2
