#pragma once
// Grain-level access to the grain tables of a hosted sparse extent, for merging snapshots: look up and
// change single grain table entries (GTEs), keeping the redundant tables equal to the primary ones.

#include "core/io/file.hpp"
#include "formats/vmdk/sparse_header.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

// The grain tables of one extent that passed scan_sparse_extent(), loaded one table at a time when a
// grain of it is first looked up. set_entry() changes the cached table only; write_changed() writes
// every changed table to its primary and, with the redundant-GD flag, its redundant location.
class SparseGrainTables {
public:
    SparseGrainTables(File& file, const SparseHeader& header, std::string file_name);

    std::uint64_t grain_count() const { return grain_count_; }

    // Whether the grain directory has a grain table for `grain` (a GD entry other than 0).
    bool has_table(std::uint64_t grain) const;

    // The GTE of `grain`: 0 unallocated, 1 zeroed (with the zeroed-grain flag), else the grain's sector.
    std::uint32_t entry(std::uint64_t grain);

    // Sets the GTE of `grain`, whose table must exist. Nothing is written until write_changed().
    void set_entry(std::uint64_t grain, std::uint32_t value);

    // Writes the changed tables (no sync) and drops every cached table.
    void write_changed();

private:
    struct Table {
        std::vector<std::uint32_t> entries;
        bool changed = false;
    };

    Table& load(std::uint64_t table_index);

    File& file_;
    SparseHeader header_;
    std::string file_name_;
    std::uint64_t grain_count_ = 0;
    std::vector<std::uint32_t> directory_;
    std::vector<std::uint32_t> redundant_directory_;
    std::map<std::uint64_t, Table> tables_;
};

// Reads the sparse header at sector 0 of `file` and validates it (see parse_sparse_header()).
SparseHeader read_valid_sparse_header(const File& file, const std::string& file_name);

}  // namespace vmcrypt::vmdk
