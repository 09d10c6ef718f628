#pragma once
// The intent file "<base>.vmcrypt-consolidate-qcow2" of an unfinished qcow2 chain merge (JSON, replaced
// atomically). It is written after the chain is validated and before the first change to any file;
// its phase decides what a re-run does (see consolidate.hpp).

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

enum class MergePhase { copy, switch_files };

// The direction the data moves in. QEMU names its two block jobs the same way.
enum class MergeStrategy {
    commit,  // the overlays' data is written into the base
    stream,  // the data below the top is written into the top, which then replaces the base file
};

struct MergeIntent {
    MergePhase phase = MergePhase::copy;
    MergeStrategy strategy = MergeStrategy::commit;
    std::string base;                       // absolute
    std::string base_format;                // "qcow2" or "raw"
    std::string top;                        // absolute
    std::vector<std::string> overlays;      // absolute, base side first, the top last
    std::vector<std::string> remove_files;  // the overlays, top first (for stream, without the top)
    // Images of the other branches (--delete-other-branches), children first, in the order they are removed.
    std::vector<std::string> branch_files;
    std::uint64_t grow_base_to = 0;  // guest bytes the base grows to before the copy; 0 keeps its size

    // True when `path` is the base, the top, an overlay or an image of another branch.
    bool mentions(const std::filesystem::path& path) const;
};

std::filesystem::path merge_intent_path(const std::filesystem::path& base);

// Reads an intent file; nullopt when it does not exist. Throws InvalidInput when it is damaged.
std::optional<MergeIntent> read_merge_intent(const std::filesystem::path& path);

// Writes the intent atomically (temporary file, fsync, rename, fsync of the folder).
void write_merge_intent(const std::filesystem::path& path, const MergeIntent& intent);

// The link file "<overlay>.vmcrypt-consolidate-qcow2-link" names the intent file from an overlay's folder
// when that folder is not the base's. Without it, nothing there leads to the intent once the top has
// dropped its backing file name or an overlay is gone, and a re-run on the top would not resume.
std::filesystem::path merge_intent_link_path(const std::filesystem::path& overlay);
inline constexpr const char* merge_intent_link_extension = ".vmcrypt-consolidate-qcow2-link";

// Reads a link file: the intent file it names. Throws InvalidInput when it is damaged.
std::filesystem::path read_merge_intent_link(const std::filesystem::path& link);

// Writes a link file atomically.
void write_merge_intent_link(const std::filesystem::path& link, const std::filesystem::path& intent_path);

}  // namespace vmcrypt::qcow2
