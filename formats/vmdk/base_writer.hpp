#pragma once
// Writing the merged view of a snapshot chain into its base disk, in place.
//
// Each range is written where the base keeps that guest range: at the same offset of a flat extent, or
// into the grain of a sparse extent. A grain the base has not allocated is appended at the end of the
// extent file. Only ranges some delta covers are written, so while the deltas exist the top
// of the chain reads the same before, during and after the copy, and copying again after a crash gives
// the same base. Order for a new grain, so that a crash leaks space instead of corrupting: grain data,
// fdatasync, then the grain table entries that point to it.

#include "formats/vmdk/guest_map.hpp"
#include "formats/vmdk/sparse_grain_tables.hpp"
#include "formats/vmdk/vmdk_disk.hpp"

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

struct BaseWriteEstimate {
    std::uint64_t data_bytes = 0;       // bytes copied from the deltas
    std::uint64_t zero_bytes = 0;       // bytes of zeroed grains written as zeros or skipped
    std::uint64_t appended_bytes = 0;   // at most this many bytes are added to sparse extent files
    // Bytes the file system must allocate per extent file: appended grains, and writes into the holes
    // of flat extents. Checked against the free space before the first write.
    std::map<std::filesystem::path, std::uint64_t> allocated_bytes;
};

class BaseWriter {
public:
    explicit BaseWriter(VmdkDisk& base);
    ~BaseWriter();

    // Checks, before any write, that every run can be stored: no data in a ZERO extent, a grain table
    // for every sparse grain to allocate, and grain table entries (32-bit sectors) that can address the
    // grown extent file. Throws UnsupportedInput naming the extent and the guest offset.
    BaseWriteEstimate check(const std::vector<GuestRun>& runs);

    // Writes `runs` (guest order) and syncs every changed file. `on_run` is called after each run.
    void write(const std::vector<GuestRun>& runs, const std::function<void(const GuestRun&)>& on_run);

    // Cuts off grains that an interrupted write appended to a sparse extent file but never entered into
    // a grain table. The file (`file_path`, canonical) is truncated to the larger of its size before the
    // first run (`original_size`) and the end of its last referenced grain. Returns the bytes removed.
    std::uint64_t trim_unreferenced_grains(const std::string& file_path, std::uint64_t original_size);

    // The sparse extent files (canonical paths) with their current sizes in bytes, to record before the
    // first write.
    std::vector<std::pair<std::string, std::uint64_t>> sparse_file_sizes() const;

    struct Target;  // one extent of the base, defined in base_writer.cpp

private:

    void write_piece(Target& target, const GuestRun& piece);
    void write_sparse(Target& target, const GuestRun& piece);
    void flush_appends(Target& target);
    void sync_batch(Target& target);

    VmdkDisk& base_;
    std::vector<std::unique_ptr<Target>> targets_;
};

}  // namespace vmcrypt::vmdk
