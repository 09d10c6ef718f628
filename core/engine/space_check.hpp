#pragma once
// The free-space check an encrypt, decrypt or deep rekey makes before its first write.

#include "core/disk.hpp"
#include "core/engine/journal.hpp"

#include <cstdint>
#include <filesystem>
#include <string>

namespace vmcrypt {

struct RewriteSpace {
    std::uint64_t window_size = 0;       // bytes per journal window
    std::size_t max_metadata_bytes = 0;  // the largest metadata write the journal carries
    std::uint64_t format_bytes = 0;      // what the format's prepare step allocates in files()[0]
};

// Checks that every file system has room for `format_bytes`, for the holes and the unwritten end of
// the data runs (the rewrite writes every unit of a run, zeros included) and for the journal next to
// files()[0]. Throws FreeSpaceCheckFailed, naming the file system and the bytes needed and available.
void check_rewrite_space(Disk& disk, Operation operation, const RewriteSpace& space, const std::string& where);

// A bound of the metadata write that a record of `fields` needs, for RewriteSpace::max_metadata_bytes.
// It leaves room for the fields and extensions that the final record adds (dataCheck, a LUKS area).
std::size_t metadata_bound(const Disk& disk, const RecordFields& fields);

}  // namespace vmcrypt
