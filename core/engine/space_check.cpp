#include "core/engine/space_check.hpp"

#include "core/io/free_space.hpp"
#include "core/log.hpp"

#include <algorithm>
#include <map>
#include <vector>

namespace vmcrypt {

namespace {

// Bytes the rewrite allocates in each file: the unallocated parts of its data runs, merged first so
// that runs which touch are scanned once.
std::vector<std::uint64_t> hole_bytes_per_file(Disk& disk)
{
    const std::vector<File*> files = disk.files();
    std::map<std::size_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> ranges;
    for (const DataRun& run : disk.data_runs())
        ranges[run.file_index].emplace_back(run.host_offset, run.host_offset + run.length);

    std::vector<std::uint64_t> bytes(files.size(), 0);
    for (auto& [index, list] : ranges) {
        std::sort(list.begin(), list.end());
        std::uint64_t begin = list.front().first;
        std::uint64_t end = list.front().second;
        for (std::size_t i = 1; i <= list.size(); ++i) {
            if (i < list.size() && list[i].first <= end) {
                end = std::max(end, list[i].second);
                continue;
            }
            bytes.at(index) += unallocated_bytes(*files.at(index), begin, end - begin);
            if (i < list.size()) {
                begin = list[i].first;
                end = list[i].second;
            }
        }
    }
    return bytes;
}

}  // namespace

void check_rewrite_space(Disk& disk, Operation operation, const RewriteSpace& space, const std::string& where)
{
    const std::vector<File*> files = disk.files();
    std::vector<SpaceDemand> demands;
    if (space.format_bytes > 0)
        demands.push_back(
            {files.front()->path(), space.format_bytes, "new " + disk.format() + " metadata and clusters"});

    const std::vector<std::uint64_t> holes = hole_bytes_per_file(disk);
    for (std::size_t i = 0; i < files.size(); ++i)
        if (holes[i] > 0)
            demands.push_back(
                {files[i]->path(), holes[i], "data written into holes of " + files[i]->path().filename().string()});

    const std::filesystem::path journal_path = Journal::path_for(files.front()->path());
    demands.push_back({journal_path, Journal::file_size(space.window_size, space.max_metadata_bytes), "the journal"});

    std::uint64_t total = 0;
    for (const SpaceDemand& demand : demands)
        total += demand.bytes;
    log_debug(where + ": the " + to_string(operation) + " allocates at most " + std::to_string(total) + " bytes");
    check_free_space(demands, where, to_string(operation));
}

std::size_t metadata_bound(const Disk& disk, const RecordFields& fields)
{
    // NOTE: 4 KiB covers the dataCheck field and the LUKS area pointer that the final record adds. A
    // record that outgrows its room is rejected by the format before the first write anyway.
    constexpr std::size_t final_record_growth = 4096;
    std::size_t bytes = 0;
    try {
        bytes = disk.record_update(fields).bytes.size();
    } catch (const Error&) {
        bytes = 0;  // the format rejects the record with its own message in the next step
    }
    return bytes + final_record_growth;
}

}  // namespace vmcrypt
