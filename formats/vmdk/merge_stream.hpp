#pragma once
// The two ways to merge a chain, and what the stream way needs.
//
// commit copies what the deltas store into the base. stream copies what lies below the top (the base's
// data and older deltas, where the top stores nothing) into the top, then gives the top the base's
// descriptor and renames it over the base file. Both end with the same guest data under the base's
// name and descriptor. Stream copies less when the top stores more than the disks below it, which is
// the usual case for a VM that ran long on its newest snapshot.

#include "formats/vmdk/guest_map.hpp"
#include "formats/vmdk/snapshot_chain.hpp"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

// The ranges commit writes into the base: the view of all deltas, newest winning.
std::vector<GuestRun> commit_runs(SnapshotChain& chain);

// The ranges stream writes into the top: the view of the base and the older deltas, minus every range
// the top stores (data or zeroed grains).
std::vector<GuestRun> stream_runs(SnapshotChain& chain);

// The top's new embedded descriptor area for stream: the base's descriptor text with `new_cid`,
// NUL-padded to the top's area. Returns nullopt, with the reason in `reason`, when stream does not
// apply: base and top must both be monolithicSparse files on one file system, the base file must have
// no other hard link, and the base's descriptor must fit the top's descriptor area.
std::optional<std::vector<std::uint8_t>> stream_descriptor_area(SnapshotChain& chain, const std::string& new_cid,
                                                                std::string& reason);

// Writes `area` over the embedded descriptor area of the hosted sparse extent `path` (locked
// exclusively while it writes) and syncs it. Throws InvalidInput when the area has another size.
void write_descriptor_area(const std::filesystem::path& path, const std::vector<std::uint8_t>& area);

// The sum of the data runs' lengths.
std::uint64_t data_bytes_of(const std::vector<GuestRun>& runs);

}  // namespace vmcrypt::vmdk
