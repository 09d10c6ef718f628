#pragma once
// A VMDK snapshot chain: the base disk, the deltas that read through it, and the other branches.
//
// A delta names its parent with parentFileNameHint (a path relative to the delta's folder) and
// parentCID, which must equal the parent's CID. qemu and libvmdk refuse to read through a parent whose
// CID differs, so every link is checked here before anything is written.

#include "core/io/file.hpp"
#include "formats/vmdk/descriptor.hpp"
#include "formats/vmdk/esxi_delta.hpp"
#include "formats/vmdk/guest_map.hpp"
#include "formats/vmdk/vmdk_disk.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

// One disk of a chain, opened with every file it consists of.
class ChainMember {
public:
    // Opens the disk whose descriptor is `path`: a hosted sparse or flat disk through VmdkDisk, or an
    // ESXi delta (vmfsSparse, seSparse). With Access::read_write every file is locked exclusively
    // (QEMU's image locks) and a VMware .lck folder is refused with DiskInUse.
    static std::unique_ptr<ChainMember> open(const std::filesystem::path& path, Access access);

    const std::filesystem::path& path() const { return path_; }
    std::string name() const { return path_.string(); }
    const Descriptor& descriptor() const;
    std::uint64_t capacity() const;  // bytes
    bool is_delta() const;           // has a parent (parentFileNameHint or a parentCID)
    std::vector<File*> files();      // descriptor file first

    // The disk as VmdkDisk, for a base; nullptr for an ESXi delta.
    VmdkDisk* disk() { return disk_.get(); }

    // The guest ranges this delta stores (data and zeroed grains), in guest order.
    std::vector<GuestRun> delta_runs();

    ~ChainMember();

private:
    ChainMember() = default;

    std::filesystem::path path_;
    std::unique_ptr<VmdkDisk> disk_;
    std::unique_ptr<EsxiDelta> esxi_;
};

enum class BranchPolicy {
    reject,                 // a chain whose base or deltas have other children is refused
    delete_other_branches,  // the other children and their descendants are removed
};

struct SnapshotChain {
    std::vector<std::unique_ptr<ChainMember>> members;   // base first, top last
    std::vector<std::unique_ptr<ChainMember>> branches;  // disks of other branches, leaves first
    std::vector<std::string> branch_summaries;           // "a.vmdk -> a2.vmdk (child of base.vmdk)"
};

// Finds the chain of `disk`: follows parents up to the base, and children down to the top when `disk`
// is not a leaf. Validates every link (parent found, parentCID equal to the parent's CID, no loop, one
// capacity), refuses encrypted or locked disks, and handles other branches by `policy`.
// Throws InvalidInput, UnsupportedInput, WrongDiskState or DiskInUse naming the file and the fix.
SnapshotChain open_snapshot_chain(const std::filesystem::path& disk, Access access, BranchPolicy policy);

// Chains longer than this are rejected as loops when following parents without validating them.
inline constexpr std::size_t max_chain_depth = 4096;

// Returns the parent that the descriptor of `disk` names in parentFileNameHint, resolved against the
// disk's folder. Returns nullopt when the disk has no hint or its descriptor cannot be read; nothing
// else (CIDs, capacities, the parent's existence) is checked.
std::optional<std::filesystem::path> parent_path_of(const std::filesystem::path& disk);

// Formats a content ID as qemu and VMware write it: eight lower-case hex digits.
std::string format_content_id(std::uint32_t cid);

}  // namespace vmcrypt::vmdk
