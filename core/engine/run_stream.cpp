#include "core/engine/run_stream.hpp"

#include <botan/hash.h>
#include <botan/loadstor.h>

#include <algorithm>

namespace vmcrypt {

RunStream::RunStream(std::vector<DataRun> runs) : runs_(std::move(runs))
{
    starts_.reserve(runs_.size());
    for (const DataRun& run : runs_) {
        starts_.push_back(total_);
        total_ += run.length;
    }
}

std::vector<RunSegment> RunStream::segments(std::uint64_t position, std::uint64_t length) const
{
    std::vector<RunSegment> result;
    if (length == 0 || runs_.empty())
        return result;

    // The last run starting at or before position.
    auto it = std::upper_bound(starts_.begin(), starts_.end(), position);
    std::size_t index = static_cast<std::size_t>(it - starts_.begin()) - 1;

    std::uint64_t end = position + length;
    std::uint64_t cursor = position;
    for (; index < runs_.size() && cursor < end; ++index) {
        const DataRun& run = runs_[index];
        std::uint64_t offset_in_run = cursor - starts_[index];
        std::uint64_t take = std::min(run.length - offset_in_run, end - cursor);

        RunSegment segment;
        segment.file_index = run.file_index;
        segment.host_offset = run.host_offset + offset_in_run;
        segment.length = take;
        segment.first_sector = run.first_sector + offset_in_run / 512;
        segment.buffer_offset = cursor - position;
        result.push_back(segment);
        cursor += take;
    }
    return result;
}

std::array<std::uint8_t, 32> RunStream::layout_digest() const
{
    std::unique_ptr<Botan::HashFunction> hash = Botan::HashFunction::create_or_throw("SHA-256");
    std::uint8_t bytes[32];
    for (const DataRun& run : runs_) {
        Botan::store_le(bytes, static_cast<std::uint64_t>(run.file_index), run.host_offset, run.length,
                        run.first_sector);
        hash->update(bytes, sizeof bytes);
    }
    std::array<std::uint8_t, 32> digest{};
    hash->final(digest.data());
    return digest;
}

}  // namespace vmcrypt
