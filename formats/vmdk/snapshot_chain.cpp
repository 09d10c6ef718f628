// Opening a snapshot chain: following parentFileNameHint up to the base, scanning the folders for
// children, and refusing anything that would make a merge change what some disk reads.

#include "formats/vmdk/snapshot_chain.hpp"

#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/text/shell_words.hpp"
#include "formats/vmdk/descriptor_syntax.hpp"
#include "formats/vmdk/sparse_grain_tables.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sys/stat.h>

namespace vmcrypt::vmdk {

namespace {

struct FileIdentity {
    dev_t device = 0;
    ino_t inode = 0;

    auto operator<=>(const FileIdentity&) const = default;
};

std::optional<FileIdentity> identity_of(const std::filesystem::path& path)
{
    struct stat status {};
    if (::stat(path.c_str(), &status) != 0)
        return std::nullopt;
    return FileIdentity{status.st_dev, status.st_ino};
}

std::string read_at_most(const File& file, std::uint64_t offset, std::uint64_t length)
{
    std::string bytes(static_cast<std::size_t>(length), '\0');
    bytes.resize(file.read_at(offset, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()}));
    return bytes;
}

// The descriptor text of a VMDK descriptor file or hosted sparse extent, or nullopt for any other file
// (extent data, a split extent without descriptor, a file that is not a VMDK at all).
std::optional<std::string> read_descriptor_text(const File& file)
{
    std::uint64_t file_size = file.size();
    std::string head = read_at_most(file, 0, sparse_header_size);
    if (head.starts_with("KDMV")) {
        std::span<const std::uint8_t> header_bytes(reinterpret_cast<const std::uint8_t*>(head.data()), head.size());
        SparseHeader header = decode_sparse_header(header_bytes, file.path().string());
        if (!has_readable_descriptor_area(header, file_size))
            return std::nullopt;
        std::string area = read_at_most(file, header.descriptor_offset * 512, header.descriptor_size * 512);
        if (area.empty() || area[0] == '\0')
            return std::nullopt;
        return area;
    }
    if (file_size >= max_descriptor_file_size)
        return std::nullopt;
    std::string text = read_at_most(file, 0, file_size);
    if (!looks_like_descriptor(text))
        return std::nullopt;
    return text;
}

bool has_vmdk_extension(const std::filesystem::path& path)
{
    std::string extension = path.extension().string();
    std::transform(extension.begin(), extension.end(), extension.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return extension == ".vmdk";
}

std::filesystem::path folder_of(const std::filesystem::path& path)
{
    std::filesystem::path folder = path.parent_path();
    return folder.empty() ? std::filesystem::path(".") : folder;
}

std::filesystem::path resolve_parent(const std::filesystem::path& child, const std::string& hint)
{
    std::filesystem::path parent(hint);
    if (parent.is_relative())
        parent = folder_of(child) / parent;
    return parent.lexically_normal();
}

// A .vmdk file of a scanned folder that names a parent.
struct ChildLink {
    std::filesystem::path path;
    FileIdentity identity;
    FileIdentity parent;
    std::string parse_error;  // set when only the parentFileNameHint line of the descriptor could be read
};

// Reads every descriptor in `folder` that names a parent with parentFileNameHint. A descriptor that
// does not parse is kept when a parentFileNameHint line names an existing file, so that a merge under
// it is rejected. Files that cannot be read at all are skipped.
std::vector<ChildLink> scan_child_links(const std::filesystem::path& folder)
{
    std::vector<ChildLink> links;
    std::error_code error;
    std::filesystem::directory_iterator entry(folder, error);
    for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
        std::filesystem::path candidate = folder / entry->path().filename();
        std::error_code type_error;
        if (!has_vmdk_extension(candidate) || !entry->is_regular_file(type_error))
            continue;
        try {
            File file = File::open(candidate, Access::read_only);
            std::optional<std::string> text = read_descriptor_text(file);
            if (!text)
                continue;
            std::optional<std::string> hint;
            std::string parse_error;
            try {
                hint = Descriptor::parse(*text, candidate.string()).parent_file_name_hint();
            } catch (const InvalidInput& e) {
                hint = find_parent_hint_line(*text);
                parse_error = e.what();
            }
            if (!hint)
                continue;
            std::optional<FileIdentity> identity = identity_of(candidate);
            std::optional<FileIdentity> parent = identity_of(resolve_parent(candidate, *hint));
            if (identity && parent)
                links.push_back(ChildLink{candidate, *identity, *parent, parse_error});
        } catch (const Error&) {
            continue;
        }
    }
    std::sort(links.begin(), links.end(), [](const ChildLink& a, const ChildLink& b) { return a.path < b.path; });
    return links;
}

// Rejects a child whose descriptor names its parent but does not parse: a merge would break it.
void check_child_readable(const ChildLink& link)
{
    if (!link.parse_error.empty())
        throw InvalidInput(link.path.string() + ": the descriptor names a disk of this chain in parentFileNameHint "
                           "but cannot be read (" + link.parse_error + "), so it may be a snapshot that the merge "
                           "would break; fix its descriptor, or move the file out of the folder if it is no snapshot");
}

std::string join(const std::vector<std::string>& items, const std::string& separator)
{
    std::string text;
    for (const std::string& item : items)
        text += (text.empty() ? "" : separator) + item;
    return text;
}

// Refuses a disk that is encrypted (by vmcrypt or VMware) or has an unfinished vmcrypt operation.
// `snapshots` are the chain members above `member`, for the message.
void check_not_encrypted(ChainMember& member, const std::vector<std::string>& snapshots)
{
    const Descriptor& descriptor = member.descriptor();
    std::string name = member.name();
    if (descriptor.encryption_keys())
        throw WrongDiskState(name + ": the disk is encrypted by VMware (encryptionKeys in the descriptor); decrypt "
                                    "the VM in vSphere or Workstation before consolidating its snapshots");
    std::optional<std::string> filters = descriptor.value("ddb.iofilters");
    if (filters && filters->find("vmwarevmcrypt") != std::string::npos)
        throw WrongDiskState(name + ": the disk is encrypted by VMware (vmwarevmcrypt I/O filter in ddb.iofilters); "
                                    "decrypt the VM in vSphere before consolidating its snapshots");
    // A snapshot of a vmcrypt-encrypted disk contains what a program wrote over the ciphertext, and the
    // ciphertext that copy-on-write copied from the base. Merging or decrypting cannot make plaintext of
    // it, so the way out is to remove the snapshots and decrypt the base.
    if (descriptor.record() && !snapshots.empty())
        throw WrongDiskState(name + ": the disk is encrypted by vmcrypt (ddb.vmcrypt.*), so its snapshots (" +
                             join(snapshots, ", ") + ") were made over ciphertext and cannot be merged into it or "
                             "decrypted; remove the snapshot files, or move them out of the folder (and point the "
                             "VM's .vmx back at " + name + "), then decrypt with: " +
                             shell_command({"vmcrypt", "decrypt", name}) + " and its key options");
    if (descriptor.record())
        throw WrongDiskState(name + ": the disk has a vmcrypt encryption record (ddb.vmcrypt.*); run vmcrypt "
                                    "decrypt " + name + " first, then consolidate the snapshots");
    std::error_code error;
    std::filesystem::path journal = std::filesystem::weakly_canonical(member.path(), error);
    journal += ".vmcrypt-journal";
    if (std::filesystem::exists(journal, error))
        throw Interrupted(name + ": an unfinished vmcrypt operation is recorded in " + journal.string() +
                          "; finish it first (vmcrypt inspect " + name + " names it)");
}

void check_link(ChainMember& child, ChainMember& parent)
{
    std::optional<std::uint32_t> parent_cid = parent.descriptor().cid();
    std::uint32_t expected = child.descriptor().parent_cid();
    if (!parent_cid)
        throw InvalidInput(parent.name() + ": CID: missing, so the snapshot " + child.name() +
                           " cannot be checked against it; restore the parent's descriptor from a backup");
    if (*parent_cid != expected)
        throw InvalidInput(child.name() + ": parentCID: " + format_content_id(expected) + " differs from the CID " +
                           format_content_id(*parent_cid) + " of the parent " + parent.name() +
                           ", so the parent was changed after this snapshot was taken and the snapshot no longer "
                           "reads correctly (qemu and VMware refuse it); restore the parent from a backup");
    if (child.capacity() != parent.capacity())
        throw InvalidInput(child.name() + ": capacity: " + std::to_string(child.capacity()) +
                           " bytes differs from the " + std::to_string(parent.capacity()) + " bytes of the parent " +
                           parent.name() + "; a snapshot has its parent's size, so restore the chain from a backup");
}

}  // namespace

std::optional<std::filesystem::path> parent_path_of(const std::filesystem::path& disk)
{
    try {
        File file = File::open(disk, Access::read_only);
        std::optional<std::string> text = read_descriptor_text(file);
        if (!text)
            return std::nullopt;
        std::optional<std::string> hint = Descriptor::parse(*text, disk.string()).parent_file_name_hint();
        if (!hint)
            return std::nullopt;
        return resolve_parent(disk, *hint);
    } catch (const Error&) {
        return std::nullopt;
    }
}

std::string format_content_id(std::uint32_t cid)
{
    char text[16];
    std::snprintf(text, sizeof text, "%08x", cid);
    return text;
}

ChainMember::~ChainMember() = default;

std::unique_ptr<ChainMember> ChainMember::open(const std::filesystem::path& path, Access access)
{
    std::unique_ptr<ChainMember> member(new ChainMember());
    member->path_ = path;

    File file = File::open(path, access);
    if (read_at_most(file, 0, 4) == "QFI\xfb")
        throw UnsupportedInput(path.string() + ": a qcow2 image; consolidate-snapshots merges VMDK snapshot chains "
                                               "only, so merge a qcow2 backing chain with: qemu-img commit " +
                               path.string() + ", or copy it with: qemu-img convert -O qcow2 " + path.string() +
                               " standalone.qcow2");
    std::optional<std::string> text = read_descriptor_text(file);
    bool esxi = false;
    if (text && !read_at_most(file, 0, 4).starts_with("KDMV")) {
        try {
            esxi = is_esxi_delta_type(Descriptor::parse(*text, path.string()).create_type());
        } catch (const Error&) {
            esxi = false;  // VmdkDisk::open() reports the parse error with its context
        }
    }
    if (esxi)
        member->esxi_ = open_esxi_delta(std::move(file), path);
    else
        member->disk_ = VmdkDisk::open(std::move(file), path);

    if (access == Access::read_write) {
        for (File* opened : member->files()) {
            if (auto lock_folder = find_vmware_lock(opened->path()))
                throw DiskInUse(opened->path().string() + ": VMware lock folder " + lock_folder->string() +
                                " exists, so a VMware product has the disk open; power off the VM (or remove a "
                                "stale lock folder) and retry");
        }
        for (File* opened : member->files())
            lock_exclusive(*opened);
    } else {
        for (File* opened : member->files()) {
            if (auto lock_folder = find_vmware_lock(opened->path()))
                throw DiskInUse(opened->path().string() + ": VMware lock folder " + lock_folder->string() +
                                " exists, so a VMware product has the disk open; power off the VM (or remove a "
                                "stale lock folder) and retry");
            if (auto holder = find_lock_holder(*opened))
                throw DiskInUse(opened->path().string() + ": the disk is in use (" + *holder +
                                "); stop the virtual machine or the other process and retry");
        }
    }
    return member;
}

const Descriptor& ChainMember::descriptor() const
{
    return disk_ ? disk_->descriptor() : esxi_->descriptor;
}

std::uint64_t ChainMember::capacity() const
{
    return disk_ ? disk_->capacity() : esxi_->capacity_sectors * 512;
}

bool ChainMember::is_delta() const
{
    return descriptor().parent_file_name_hint().has_value() || descriptor().parent_cid() != no_parent_cid;
}

std::vector<File*> ChainMember::files()
{
    if (disk_)
        return disk_->files();
    std::vector<File*> result;
    for (const std::unique_ptr<File>& file : esxi_->files)
        result.push_back(file.get());
    return result;
}

std::vector<GuestRun> ChainMember::delta_runs()
{
    if (esxi_)
        return esxi_->runs;

    // Allocated grains come from the validated data runs; zeroed grains (GTE 1) from the grain tables.
    std::vector<File*> disk_files = disk_->files();
    std::vector<GuestRun> data;
    for (const DataRun& run : disk_->data_runs())
        data.push_back(GuestRun{run.first_sector * 512, run.length, GuestRunKind::data, disk_files[run.file_index],
                                run.host_offset});

    std::vector<GuestRun> zeros;
    for (const VmdkDisk::ExtentFile& extent : disk_->extent_files()) {
        if (extent.line.type == "ZERO") {
            // A ZERO extent reads zeros and hides the parent, like a zeroed grain.
            append_guest_run(zeros, GuestRun{extent.first_sector * 512, extent.line.sectors * 512, GuestRunKind::zero});
            continue;
        }
        if (extent.line.type != "SPARSE")
            throw UnsupportedInput(name() + ": line " + std::to_string(extent.line.line_number) + ": extent: a " +
                                   extent.line.type + " extent in a snapshot delta is not supported; vmcrypt merges "
                                   "hosted sparse, vmfsSparse and seSparse deltas");
        SparseHeader header = read_valid_sparse_header(*extent.file, extent.file->path().string());
        if (!header.has_zeroed_grain_entries())
            continue;
        SparseGrainTables tables(*extent.file, header, extent.file->path().string());
        for (std::uint64_t grain = 0; grain < tables.grain_count(); ++grain) {
            if (grain % grain_table_entry_count == 0)
                tables.write_changed();  // nothing changed: this only drops the cached tables
            if (tables.entry(grain) != 1)
                continue;
            std::uint64_t first = grain * header.grain_size;
            std::uint64_t sectors = std::min(header.grain_size, header.capacity - first);
            append_guest_run(zeros, GuestRun{(extent.first_sector + first) * 512, sectors * 512, GuestRunKind::zero});
        }
    }
    if (zeros.empty())
        return data;
    return overlay_layers({zeros, data});  // the two never overlap: a grain is either allocated or zeroed
}

SnapshotChain open_snapshot_chain(const std::filesystem::path& disk, Access access, BranchPolicy policy)
{
    std::error_code error;
    if (!std::filesystem::exists(disk, error))
        throw InvalidInput(disk.string() + ": file not found; check the path of the disk");

    // Up from the given disk to the base.
    std::vector<std::unique_ptr<ChainMember>> up;
    std::vector<FileIdentity> identities;
    up.push_back(ChainMember::open(disk, access));
    identities.push_back(*identity_of(disk));
    while (up.back()->is_delta()) {
        ChainMember& child = *up.back();
        std::optional<std::string> hint = child.descriptor().parent_file_name_hint();
        if (!hint)
            throw InvalidInput(child.name() + ": parentFileNameHint: missing, although parentCID " +
                               format_content_id(child.descriptor().parent_cid()) +
                               " says the disk is a snapshot; add parentFileNameHint=\"PARENT.vmdk\" naming its parent");
        std::filesystem::path parent_path = resolve_parent(child.path(), *hint);
        std::optional<FileIdentity> identity = identity_of(parent_path);
        if (!identity)
            throw InvalidInput(child.name() + ": parentFileNameHint: parent \"" + *hint + "\" not found (looked for " +
                               parent_path.string() + "); put the parent disk back, or correct the hint if it moved");
        if (std::find(identities.begin(), identities.end(), *identity) != identities.end())
            throw InvalidInput(child.name() + ": parentFileNameHint: \"" + *hint + "\" leads back to " +
                               parent_path.string() + ", so the snapshot chain is a loop; correct the hint to name "
                               "the real parent");
        std::unique_ptr<ChainMember> parent = ChainMember::open(parent_path, access);
        check_link(child, *parent);
        up.push_back(std::move(parent));
        identities.push_back(*identity);
    }

    SnapshotChain chain;
    for (auto it = up.rbegin(); it != up.rend(); ++it)
        chain.members.push_back(std::move(*it));
    std::reverse(identities.begin(), identities.end());

    // Children, from every folder of the chain. NOTE: a child in another folder (a linked clone whose
    // hint is "../vm/base.vmdk") is not found. Its parentCID check then fails after the merge, so it
    // stops reading instead of reading a changed base, and a running clone holds a lock that stops the merge.
    std::set<std::filesystem::path> folders;
    for (const auto& member : chain.members)
        folders.insert(std::filesystem::weakly_canonical(folder_of(member->path()), error));
    std::map<FileIdentity, std::vector<ChildLink>> children;
    for (const std::filesystem::path& folder : folders)
        for (ChildLink& link : scan_child_links(folder))
            children[link.parent].push_back(link);

    // Down from the given disk to the top, while there is one child.
    for (;;) {
        const std::vector<ChildLink>& below = children[identities.back()];
        if (below.empty())
            break;
        ChainMember& given = *chain.members.back();
        if (below.size() > 1) {
            std::vector<std::string> names;
            for (const ChildLink& link : below)
                names.push_back(link.path.string());
            throw WrongDiskState(given.name() + ": the disk has " + std::to_string(below.size()) +
                                 " snapshots that branch (" + join(names, ", ") +
                                 "), so it is unclear which state to keep; name the newest snapshot of the branch "
                                 "the VM uses (the .vmdk file its .vmx names)");
        }
        const ChildLink& link = below.front();
        check_child_readable(link);
        if (std::find(identities.begin(), identities.end(), link.identity) != identities.end())
            throw InvalidInput(link.path.string() + ": parentFileNameHint: the snapshot chain is a loop; correct the "
                                                    "hint to name the real parent");
        std::unique_ptr<ChainMember> child = ChainMember::open(link.path, access);
        check_link(*child, given);
        chain.members.push_back(std::move(child));
        identities.push_back(link.identity);
    }

    // Other branches: children of a member that are not the next member, with all their descendants.
    for (const FileIdentity& identity : identities)
        for (const ChildLink& link : children[identity])
            check_child_readable(link);

    std::set<FileIdentity> on_chain(identities.begin(), identities.end());
    std::vector<std::filesystem::path> branch_paths;  // parents before children
    for (std::size_t i = 0; i < identities.size(); ++i) {
        for (const ChildLink& root : children[identities[i]]) {
            if (on_chain.count(root.identity))
                continue;
            std::vector<std::string> names;
            std::vector<FileIdentity> pending = {root.identity};
            std::set<FileIdentity> seen = on_chain;
            std::map<FileIdentity, std::filesystem::path> paths = {{root.identity, root.path}};
            while (!pending.empty()) {
                FileIdentity current = pending.front();
                pending.erase(pending.begin());
                if (!seen.insert(current).second)
                    continue;
                names.push_back(paths[current].string());
                branch_paths.push_back(paths[current]);
                for (const ChildLink& grandchild : children[current]) {
                    paths[grandchild.identity] = grandchild.path;
                    pending.push_back(grandchild.identity);
                }
            }
            chain.branch_summaries.push_back(join(names, " -> ") + " (branches off " + chain.members[i]->name() + ")");
            on_chain.insert(seen.begin(), seen.end());
        }
    }
    if (!chain.branch_summaries.empty() && policy == BranchPolicy::reject)
        throw WrongDiskState(chain.members.back()->name() + ": the snapshot chain branches, and merging this branch "
                             "into the shared parent would change what the other branches read: " +
                             join(chain.branch_summaries, "; ") +
                             "; to keep only this branch and delete the others, as deleting all snapshots in VMware "
                             "does, add --delete-other-branches");
    for (auto it = branch_paths.rbegin(); it != branch_paths.rend(); ++it)
        chain.branches.push_back(ChainMember::open(*it, access));

    std::vector<std::string> snapshots;
    for (std::size_t i = 1; i < chain.members.size(); ++i)
        snapshots.push_back(chain.members[i]->name());
    for (auto& member : chain.branches)
        snapshots.push_back(member->name());
    check_not_encrypted(*chain.members.front(), snapshots);
    for (std::size_t i = 1; i < chain.members.size(); ++i)
        check_not_encrypted(*chain.members[i], {});
    for (auto& member : chain.branches)
        check_not_encrypted(*member, {});
    if (chain.members.size() < 2)
        throw WrongDiskState(chain.members.front()->name() + ": the disk has no snapshots; nothing to consolidate");
    return chain;
}

}  // namespace vmcrypt::vmdk
