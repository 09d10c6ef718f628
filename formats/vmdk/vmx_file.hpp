#pragma once
// The VMware configuration files next to a disk: the .vmx names the disk files a VM uses in
// `<device>.fileName` entries, and the .vmsd lists its snapshots. Both are `key = "value"` text files.
// vmcrypt changes only the values it must and keeps every other byte, and replaces a file atomically
// (temporary file, fsync, rename, fsync of the folder).

#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

// A `*.fileName` entry of a .vmx that names a disk file.
struct VmxDiskReference {
    std::filesystem::path vmx;
    std::string key;                    // "scsi0:0.fileName"
    std::string value;                  // as written
    std::filesystem::path resolved;     // the value as a path, relative ones resolved against the .vmx folder
};

// The .vmx files in `folder` and their disk entries.
std::vector<VmxDiskReference> find_vmx_disk_references(const std::filesystem::path& folder);

// Whether `reference` names `disk` (same file, or the same path when the file is gone).
bool names_disk(const VmxDiskReference& reference, const std::filesystem::path& disk);

// Rewrites every `*.fileName` entry of `vmx` that names `from` so that it names `to`, written the way
// the old value was (a bare name next to the .vmx, a relative path, or an absolute path). Returns
// whether the file changed.
bool repoint_vmx_disk(const std::filesystem::path& vmx, const std::filesystem::path& from,
                      const std::filesystem::path& to);

// The snapshot database of a .vmx: `snapshot.fileName` if the .vmx sets it, else `<vmx stem>.vmsd`.
std::filesystem::path vmsd_path_of(const std::filesystem::path& vmx);

// Empties the snapshot list of a .vmsd: removes the snapshotN.* entries and snapshot.current and sets
// snapshot.numSnapshots to "0", keeping snapshot.lastUID so that new snapshots get new ids. Returns
// whether the file changed; a missing file is left missing.
bool empty_snapshot_list(const std::filesystem::path& vmsd);

// Replaces `path` with `contents` atomically, keeping the file mode of the old file.
void replace_file_atomically(const std::filesystem::path& path, const std::string& contents);

}  // namespace vmcrypt::vmdk
