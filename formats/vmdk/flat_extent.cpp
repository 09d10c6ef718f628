#include "formats/vmdk/flat_extent.hpp"

#include "formats/vmdk/run_list.hpp"

#include <algorithm>

namespace vmcrypt::vmdk {

FlatExtentScan scan_flat_extent(const File& file, std::uint64_t offset, std::uint64_t length,
                                std::size_t file_index, std::uint64_t first_guest_sector)
{
    FlatExtentScan scan;
    std::uint64_t end = offset + length;
    std::uint64_t position = offset;
    const bool without_holes = file.known_without_holes();
    const std::uint64_t size = without_holes ? file.size() : 0;

    while (position < end) {
        if (without_holes && position >= size)
            break;
        std::uint64_t data = without_holes ? position : file.next_data(position);
        if (data >= end)
            break;
        std::uint64_t hole = without_holes ? size : std::max(file.next_hole(data), data + 1);

        std::uint64_t run_start = std::max(data / 512 * 512, position);
        std::uint64_t run_end = std::min((hole + 511) / 512 * 512, end);

        DataRun run;
        run.file_index = file_index;
        run.host_offset = run_start;
        run.length = run_end - run_start;
        run.first_sector = first_guest_sector + (run_start - offset) / 512;
        append_run(scan.runs, run);
        scan.allocated_bytes += run.length;

        position = run_end;
    }
    return scan;
}

}  // namespace vmcrypt::vmdk
