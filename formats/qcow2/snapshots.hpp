#pragma once
// The internal snapshot table: read for inspect and to refuse a rewrite of a disk that has snapshots.
//
// Entry layout from docs/interop/qcow2.txt: 40 fixed bytes, extra data, the id and the name, padded to
// 8 bytes. Limits follow QEMU 7.2 (block/qcow2-snapshot.c): extra data up to 1024 bytes per entry.

#include "core/io/file.hpp"
#include "formats/qcow2/header.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

inline constexpr std::uint32_t max_snapshot_extra_data = 1024;

struct Snapshot {
    std::string id;
    std::string name;
    std::uint64_t l1_table_offset = 0;
    std::uint32_t l1_size = 0;
    std::uint32_t date_seconds = 0;
    std::uint64_t vm_state_size = 0;
    std::uint64_t disk_size = 0;  // guest bytes; 0 when the entry has no such extra data
};

// Reads and validates the header's snapshot table. Throws InvalidInput naming the entry and field.
std::vector<Snapshot> read_snapshots(const File& file, const Header& header, const std::string& where);

}  // namespace vmcrypt::qcow2
