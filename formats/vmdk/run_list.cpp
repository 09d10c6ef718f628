#include "formats/vmdk/run_list.hpp"

namespace vmcrypt::vmdk {

void append_run(std::vector<DataRun>& runs, const DataRun& run)
{
    if (!runs.empty()) {
        DataRun& last = runs.back();
        bool same_file = last.file_index == run.file_index;
        bool host_contiguous = last.host_offset + last.length == run.host_offset;
        bool guest_contiguous = last.first_sector + last.length / 512 == run.first_sector;
        if (same_file && host_contiguous && guest_contiguous) {
            last.length += run.length;
            return;
        }
    }
    runs.push_back(run);
}

}  // namespace vmcrypt::vmdk
