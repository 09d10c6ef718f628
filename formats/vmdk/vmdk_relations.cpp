// Parents and children of a VMDK disk, and encryption by VMware.

#include "formats/vmdk/vmdk_disk.hpp"

#include "formats/vmdk/descriptor_syntax.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sys/stat.h>
#include <system_error>

namespace vmcrypt::vmdk {

namespace {

bool has_vmdk_extension(const std::filesystem::path& path)
{
    std::string extension = path.extension().string();
    std::transform(extension.begin(), extension.end(), extension.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return extension == ".vmdk";
}

std::string read_at_most(const File& file, std::uint64_t offset, std::uint64_t length)
{
    std::string bytes(static_cast<std::size_t>(length), '\0');
    bytes.resize(file.read_at(offset, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()}));
    return bytes;
}

// Reads the parentFileNameHint of the disk whose descriptor is `path`, embedded or separate, reading at
// most the sparse header and a 1 MiB descriptor. Returns nullopt for a file that is not a VMDK
// descriptor or has no hint. A descriptor that fails to parse still gives the hint of its
// parentFileNameHint line, so that a snapshot vmcrypt cannot read is reported as a child, not skipped. The rest of a sparse header is not validated, so that
// a child in a format vmcrypt does not rewrite (streamOptimized, say) is still found.
std::optional<std::string> read_parent_hint(const std::filesystem::path& path)
{
    try {
        File file = File::open(path, Access::read_only);
        std::uint64_t file_size = file.size();
        std::string head = read_at_most(file, 0, sparse_header_size);

        std::string descriptor_bytes;
        if (head.starts_with("KDMV")) {
            std::span<const std::uint8_t> header_bytes(reinterpret_cast<const std::uint8_t*>(head.data()), head.size());
            SparseHeader header = decode_sparse_header(header_bytes, path.string());
            if (!has_readable_descriptor_area(header, file_size))
                return std::nullopt;
            descriptor_bytes = read_at_most(file, header.descriptor_offset * 512, header.descriptor_size * 512);
        } else {
            if (file_size >= max_descriptor_file_size)
                return std::nullopt;
            descriptor_bytes = read_at_most(file, 0, file_size);
            if (!looks_like_descriptor(descriptor_bytes))
                return std::nullopt;
        }
        try {
            return Descriptor::parse(descriptor_bytes, path.string()).parent_file_name_hint();
        } catch (const InvalidInput&) {
            return find_parent_hint_line(descriptor_bytes);
        }
    } catch (const Error&) {
        return std::nullopt;
    }
}

}  // namespace

DiskRelations VmdkDisk::relations() const
{
    DiskRelations relations;

    // A disk with a parentCID but no parentFileNameHint still reads through a parent. The parent is
    // listed as "parentCID=..." so that callers see that there is one.
    if (std::optional<std::string> hint = descriptor_.parent_file_name_hint()) {
        relations.parents.push_back(*hint);
    } else if (descriptor_.parent_cid() != no_parent_cid) {
        char text[32];
        std::snprintf(text, sizeof text, "parentCID=%08x", descriptor_.parent_cid());
        relations.parents.emplace_back(text);
    }

    std::vector<std::pair<dev_t, ino_t>> own_files;
    for (const std::unique_ptr<File>& file : files_) {
        struct stat status {};
        if (::fstat(file->fd(), &status) == 0)
            own_files.emplace_back(status.st_dev, status.st_ino);
    }

    std::filesystem::path folder = path_.parent_path();
    std::error_code error;
    std::filesystem::directory_iterator entry(folder.empty() ? "." : folder, error);
    for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
        std::filesystem::path candidate = folder / entry->path().filename();
        std::error_code type_error;
        if (!has_vmdk_extension(candidate) || !entry->is_regular_file(type_error))
            continue;

        // Never open this disk's own files a second time.
        struct stat status {};
        if (::stat(candidate.c_str(), &status) != 0)
            continue;
        std::pair<dev_t, ino_t> identity(status.st_dev, status.st_ino);
        if (std::find(own_files.begin(), own_files.end(), identity) != own_files.end())
            continue;

        std::optional<std::string> hint = read_parent_hint(candidate);
        if (!hint)
            continue;
        std::filesystem::path parent(*hint);
        if (parent.is_relative())
            parent = candidate.parent_path() / parent;
        std::error_code compare_error;
        if (std::filesystem::equivalent(parent, path_, compare_error))
            relations.children.push_back(candidate.string());
    }
    std::sort(relations.children.begin(), relations.children.end());
    return relations;
}

std::optional<std::string> VmdkDisk::foreign_encryption() const
{
    if (descriptor_.encryption_keys())
        return "VMware (encryptionKeys in the descriptor)";
    std::optional<std::string> filters = descriptor_.value("ddb.iofilters");
    if (filters && filters->find("vmwarevmcrypt") != std::string::npos)
        return "VMware (vmwarevmcrypt I/O filter in ddb.iofilters)";
    return std::nullopt;
}

}  // namespace vmcrypt::vmdk
