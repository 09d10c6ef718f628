#pragma once
// What a snapshot delta stores, as guest byte ranges, and the view of a whole chain of deltas.

#include "core/io/file.hpp"

#include <cstdint>
#include <vector>

namespace vmcrypt::vmdk {

enum class GuestRunKind {
    data,  // the range reads from `file` at `host_offset`
    zero,  // the range reads as zeros and hides the parent (a zeroed grain)
};

// A guest byte range that a delta covers. Ranges a delta does not cover read from its parent.
struct GuestRun {
    std::uint64_t guest_offset = 0;  // bytes, a multiple of 512
    std::uint64_t length = 0;        // bytes, a multiple of 512
    GuestRunKind kind = GuestRunKind::data;
    const File* file = nullptr;      // data runs only
    std::uint64_t host_offset = 0;   // data runs only
};

// Merges the runs of deltas into the view of the newest: `layers` is ordered from the delta next to
// the base to the top, and each layer's runs are in guest order without overlaps. Where layers overlap,
// the newest wins. Returns runs in guest order, neighbours that continue each other merged.
std::vector<GuestRun> overlay_layers(const std::vector<std::vector<GuestRun>>& layers);

// Returns the parts of `runs` that no run of `cover` overlaps. Both lists are in guest order without
// overlaps of their own.
std::vector<GuestRun> remove_covered(const std::vector<GuestRun>& runs, const std::vector<GuestRun>& cover);

// Appends `run`, or extends the last run when `run` continues it in guest bytes, kind, file and host
// bytes. Runs must be appended in guest order.
void append_guest_run(std::vector<GuestRun>& runs, const GuestRun& run);

}  // namespace vmcrypt::vmdk
