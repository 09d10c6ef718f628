#pragma once
// The data runs of a disk seen as one stream of bytes: the engine's windows are byte ranges of this
// stream, so a window's position is stable as long as the disk's layout is.

#include "core/disk.hpp"

#include <array>
#include <vector>

namespace vmcrypt {

// A part of one run that falls inside a window.
struct RunSegment {
    std::size_t file_index = 0;
    std::uint64_t host_offset = 0;
    std::uint64_t length = 0;
    std::uint64_t first_sector = 0;
    std::uint64_t buffer_offset = 0;  // where the segment sits in the window buffer
};

class RunStream {
public:
    explicit RunStream(std::vector<DataRun> runs);

    std::uint64_t total_bytes() const { return total_; }

    // The segments of [position, position + length), in stream order.
    std::vector<RunSegment> segments(std::uint64_t position, std::uint64_t length) const;

    // SHA-256 over the run list: a fingerprint of the layout, recorded by the journal so a resumed run
    // refuses a disk whose grain tables or extents changed meanwhile.
    std::array<std::uint8_t, 32> layout_digest() const;

private:
    std::vector<DataRun> runs_;
    std::vector<std::uint64_t> starts_;  // stream position of each run
    std::uint64_t total_ = 0;
};

}  // namespace vmcrypt
