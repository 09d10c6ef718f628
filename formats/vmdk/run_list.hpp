#pragma once
// Building a disk's data run list in guest order, merging neighbours.

#include "core/disk.hpp"

#include <vector>

namespace vmcrypt::vmdk {

// Appends `run` to `runs`, or extends the last run when `run` continues it in the same file both in
// host bytes and in guest sectors. Runs must be appended in guest order.
void append_run(std::vector<DataRun>& runs, const DataRun& run);

}  // namespace vmcrypt::vmdk
