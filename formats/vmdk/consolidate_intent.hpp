#pragma once
// The intent file of an unfinished consolidate-snapshots run: the plan, written before the first change
// to any file of the chain, and its phase. See consolidate.hpp for the protocol.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace vmcrypt::vmdk {

enum class ConsolidatePhase { copy, switch_metadata };

// Which way the data moves. QEMU names the two block jobs the same way.
enum class MergeStrategy {
    commit,  // the deltas' data is copied into the base
    stream,  // the data below the top is copied into the top, which then replaces the base file
};

struct ConsolidateIntent {
    ConsolidatePhase phase = ConsolidatePhase::copy;
    MergeStrategy strategy = MergeStrategy::commit;
    std::string base;                       // base descriptor, absolute
    std::string top;                        // newest delta descriptor, absolute
    std::vector<std::string> deltas;        // delta descriptors, base side first
    std::vector<std::string> remove_files;  // every file of the deltas
    std::vector<std::string> branch_files;  // every file of the other branches, leaves first
    std::vector<std::string> vmx_files;     // .vmx files to repoint from top to base
    std::string old_cid;
    std::string new_cid;
    std::vector<std::pair<std::string, std::uint64_t>> sparse_file_sizes;  // target sparse extents before the copy
    std::vector<std::uint8_t> top_descriptor;  // stream: the top's new embedded descriptor area

    // Whether `path` is one of the files this intent is about.
    bool mentions(const std::filesystem::path& path) const;
};

// Reads an intent file; nullopt when it does not exist. Throws InvalidInput when it is damaged.
std::optional<ConsolidateIntent> read_consolidate_intent(const std::filesystem::path& path);

// Writes the intent atomically (temporary file, fsync, rename, fsync of the folder).
void write_consolidate_intent(const std::filesystem::path& path, const ConsolidateIntent& intent);

}  // namespace vmcrypt::vmdk
