#include "formats/vmdk/guest_map.hpp"

#include <iterator>
#include <map>

namespace vmcrypt::vmdk {

void append_guest_run(std::vector<GuestRun>& runs, const GuestRun& run)
{
    if (run.length == 0)
        return;
    if (!runs.empty()) {
        GuestRun& last = runs.back();
        bool continues = last.kind == run.kind && last.guest_offset + last.length == run.guest_offset &&
                         (run.kind == GuestRunKind::zero ||
                          (last.file == run.file && last.host_offset + last.length == run.host_offset));
        if (continues) {
            last.length += run.length;
            return;
        }
    }
    runs.push_back(run);
}

namespace {

// Cuts the run that contains `offset` in two, so that a run starts exactly at `offset`.
void split_at(std::map<std::uint64_t, GuestRun>& map, std::uint64_t offset)
{
    auto after = map.upper_bound(offset);
    if (after == map.begin())
        return;
    auto containing = std::prev(after);
    GuestRun& run = containing->second;
    if (run.guest_offset == offset || run.guest_offset + run.length <= offset)
        return;

    GuestRun tail = run;
    std::uint64_t head_length = offset - run.guest_offset;
    tail.guest_offset = offset;
    tail.length = run.length - head_length;
    if (tail.kind == GuestRunKind::data)
        tail.host_offset += head_length;
    run.length = head_length;
    map.emplace(offset, tail);
}

}  // namespace

std::vector<GuestRun> remove_covered(const std::vector<GuestRun>& runs, const std::vector<GuestRun>& cover)
{
    std::map<std::uint64_t, GuestRun> map;
    for (const GuestRun& run : runs)
        map.emplace(run.guest_offset, run);
    for (const GuestRun& hole : cover) {
        std::uint64_t end = hole.guest_offset + hole.length;
        split_at(map, hole.guest_offset);
        split_at(map, end);
        map.erase(map.lower_bound(hole.guest_offset), map.lower_bound(end));
    }

    std::vector<GuestRun> result;
    result.reserve(map.size());
    for (const auto& [offset, run] : map)
        append_guest_run(result, run);
    return result;
}

std::vector<GuestRun> overlay_layers(const std::vector<std::vector<GuestRun>>& layers)
{
    std::map<std::uint64_t, GuestRun> map;  // keyed by guest_offset; runs never overlap
    for (const std::vector<GuestRun>& layer : layers) {
        for (const GuestRun& run : layer) {
            std::uint64_t end = run.guest_offset + run.length;
            split_at(map, run.guest_offset);
            split_at(map, end);
            map.erase(map.lower_bound(run.guest_offset), map.lower_bound(end));
            map.emplace(run.guest_offset, run);
        }
    }

    std::vector<GuestRun> result;
    result.reserve(map.size());
    for (const auto& [offset, run] : map)
        append_guest_run(result, run);
    return result;
}

}  // namespace vmcrypt::vmdk
