#pragma once
// Free-space checks made before an operation's first write, so that a full file system stops it while
// nothing has changed instead of in the middle.

#include "core/error.hpp"
#include "core/io/file.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt {

// Bytes that writing all of [offset, offset + length) of `file` makes the file system allocate: the
// holes in that range and the part past the end of the file. Preallocated (unwritten) extents count
// as allocated where FIEMAP reports them, and shared (reflinked) extents as unallocated; without
// FIEMAP (tmpfs) SEEK_HOLE decides.
std::uint64_t unallocated_bytes(const File& file, std::uint64_t offset, std::uint64_t length);

// Space that one part of an operation allocates on the file system that contains `path` (an existing
// file, or a file to be created in an existing folder).
struct SpaceDemand {
    std::filesystem::path path;
    std::uint64_t bytes = 0;
    std::string purpose;  // "the journal", "data written into holes", ...
};

// The failed check of check_free_space(), thrown before anything was written.
struct FreeSpaceCheckFailed : NoSpace {
    explicit FreeSpaceCheckFailed(const std::string& m) : NoSpace(m) {}
};

// Sums the demands per file system and throws FreeSpaceCheckFailed, with a message that begins with `where` and
// names the file system, the bytes needed per purpose and the bytes available, when one has too little
// room. The root user may also use the blocks a file system reserves for it.
void check_free_space(const std::vector<SpaceDemand>& demands, const std::string& where, const std::string& operation);

}  // namespace vmcrypt
