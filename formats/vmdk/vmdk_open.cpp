// Opening a VMDK disk: finding the descriptor, validating it against the createType, and opening and
// scanning each extent file once.

#include "formats/vmdk/vmdk_disk.hpp"

#include "core/error.hpp"
#include "formats/vmdk/create_type.hpp"
#include "formats/vmdk/flat_extent.hpp"
#include "formats/vmdk/grain_directory.hpp"
#include "formats/vmdk/run_list.hpp"

#include <cerrno>
#include <cstring>
#include <sys/stat.h>

namespace vmcrypt::vmdk {

namespace {

struct FileIdentity {
    dev_t device = 0;
    ino_t inode = 0;

    bool operator==(const FileIdentity&) const = default;
};

FileIdentity identity_of(const File& file)
{
    struct stat status {};
    if (::fstat(file.fd(), &status) != 0) {
        int saved = errno;
        throw IoError(file.path().string() + ": stat failed: " + std::strerror(saved));
    }
    return FileIdentity{status.st_dev, status.st_ino};
}

std::string where(const std::string& name, const ExtentLine& line)
{
    return name + ": line " + std::to_string(line.line_number);
}

std::string read_bytes(const File& file, std::uint64_t offset, std::uint64_t length)
{
    std::string bytes(static_cast<std::size_t>(length), '\0');
    std::size_t count = file.read_at(offset, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()});
    bytes.resize(count);
    return bytes;
}

SparseHeader read_sparse_header(const File& file, const std::string& name)
{
    std::vector<std::uint8_t> bytes(sparse_header_size);
    bytes.resize(file.read_at(0, bytes));
    return decode_sparse_header(bytes, name);
}

// The createType of an embedded descriptor, for a header that validation would reject as
// streamOptimized, or nullopt when the descriptor area cannot be read or parsed.
std::optional<std::string> peek_create_type(const File& file, const SparseHeader& header, std::uint64_t file_size,
                                            const std::string& name)
{
    if (!has_readable_descriptor_area(header, file_size))
        return std::nullopt;
    try {
        std::string area = read_bytes(file, header.descriptor_offset * 512, header.descriptor_size * 512);
        return Descriptor::parse(area, name).create_type();
    } catch (const Error&) {
        return std::nullopt;
    }
}

void check_extent_access(const ExtentLine& line, Access access, const std::string& location)
{
    if (line.access == "NOACCESS")
        throw UnsupportedInput(location + ": extent: access is NOACCESS, so its data can be neither read nor "
                                          "rewritten; vmcrypt needs RW extents");
    if (line.access == "RDONLY" && access == Access::read_write)
        throw UnsupportedInput(location + ": extent: access is RDONLY, but vmcrypt rewrites extents in place; "
                                          "make the extent RW, or open the disk read-only to inspect it");
}

bool is_all_zero(std::string_view bytes)
{
    return bytes.find_first_not_of('\0') == std::string_view::npos;
}

}  // namespace

std::unique_ptr<VmdkDisk> VmdkDisk::open(File file, const std::filesystem::path& path)
{
    std::unique_ptr<VmdkDisk> disk(new VmdkDisk());
    disk->path_ = path;
    disk->name_ = path.string();

    std::string magic = read_bytes(file, 0, 4);
    if (magic == "KDMV")
        disk->open_embedded(std::move(file), disk->name_);
    else
        disk->open_separate(std::move(file), disk->name_);
    return disk;
}

SparseExtentScan VmdkDisk::scan_with_hint(const File& file, const SparseHeader& header, std::size_t file_index,
                                          std::uint64_t first_guest_sector, const std::string& file_name) const
{
    try {
        return scan_sparse_extent(file, header, file_index, first_guest_sector, file_name);
    } catch (const SharedGrains& e) {
        // qemu-img copies every grain on its own. It drops vmcrypt's record, so a copy of an encrypted
        // disk would be ciphertext that nothing decrypts: no command is offered for one.
        if (descriptor_.record())
            throw InvalidInput(std::string(e.what()) + ", so the encrypted extent is damaged; restore the disk "
                               "from a backup");
        throw InvalidInput(std::string(e.what()) + ", which vmcrypt cannot rewrite in place; copy the disk with: " +
                           conversion_hint(name_) + " and use the copy");
    }
}

void VmdkDisk::open_embedded(File file, const std::string& name)
{
    SparseHeader header = read_sparse_header(file, name);
    std::uint64_t file_size = file.size();
    if (header.is_stream_optimized()) {
        // Name the createType in the message when the embedded descriptor is readable.
        std::optional<std::string> create_type = peek_create_type(file, header, file_size, name);
        layout_of_create_type(create_type.value_or("streamOptimized"), name);
    }
    validate_sparse_header(header, file_size, name);

    if (header.descriptor_offset == 0)
        throw InvalidInput(name + ": sparse header: descriptorOffset is 0, so the file has no embedded descriptor; "
                                  "it is an extent of a split disk, so open the descriptor file that lists it");
    embedded_ = EmbeddedArea{header.descriptor_offset * 512, header.descriptor_size * 512};
    std::string area = read_bytes(file, embedded_->offset, embedded_->size);
    if (area.empty() || area[0] == '\0')
        throw InvalidInput(name + ": embedded descriptor: empty; the file is one extent of a split disk "
                                  "(twoGbMaxExtentSparse), so open the disk's descriptor file instead");
    if (area.find('\0') == std::string::npos)
        throw InvalidInput(name + ": descriptorSize: the embedded descriptor fills all " + std::to_string(area.size()) +
                           " reserved bytes without a terminating NUL, so its text is longer than the area or cut "
                           "off; restore the disk from a backup");
    descriptor_ = Descriptor::parse(area, name);

    Layout layout = layout_of_create_type(descriptor_.create_type(), name);
    if (layout != Layout::embedded_sparse)
        throw InvalidInput(name + ": createType \"" + descriptor_.create_type() +
                           "\" needs a separate descriptor file, but this descriptor is embedded in a sparse "
                           "extent; open the descriptor file that lists this extent, or correct the createType");
    const std::vector<ExtentLine>& lines = descriptor_.extents();
    if (lines.size() != 1)
        throw InvalidInput(where(name, lines[1]) + ": extent: a monolithicSparse descriptor lists exactly one "
                                                   "extent, but this one lists " +
                           std::to_string(lines.size()) + "; remove the extra extent lines");
    const ExtentLine& line = lines[0];
    if (line.type != "SPARSE")
        throw InvalidInput(where(name, line) + ": extent: type " + line.type +
                           " does not belong to createType \"monolithicSparse\", whose extent is SPARSE; correct "
                           "the extent type");
    check_extent_access(line, file.access(), where(name, line));
    if (line.sectors != header.capacity)
        throw InvalidInput(where(name, line) + ": extent: sector count " + std::to_string(line.sectors) +
                           " differs from the sparse header's capacity " + std::to_string(header.capacity) +
                           "; correct the sector count on the extent line");

    // NOTE: the extent line's file name is not checked, because the extent is this file by definition.
    // qemu ignores the name too, so a renamed monolithicSparse file still opens.
    files_.push_back(std::make_unique<File>(std::move(file)));
    SparseExtentScan scan = scan_with_hint(*files_[0], header, 0, 0, name);
    extents_.push_back(Extent{line, 0, 0, file_size, scan.allocated_bytes});
    runs_ = std::move(scan.runs);
    capacity_sectors_ = header.capacity;
}

void VmdkDisk::open_separate(File file, const std::string& name)
{
    std::uint64_t file_size = file.size();
    if (file_size >= max_descriptor_file_size)
        throw InvalidInput(name + ": descriptor file is " + std::to_string(file_size) +
                           " bytes, but a descriptor file must be smaller than 1 MiB; check that this is the "
                           "descriptor and not an extent");
    descriptor_ = Descriptor::parse(read_bytes(file, 0, file_size), name);

    Layout layout = layout_of_create_type(descriptor_.create_type(), name);
    if (layout == Layout::embedded_sparse)
        throw InvalidInput(name + ": createType \"" + descriptor_.create_type() +
                           "\" keeps its descriptor inside the sparse extent, not in a separate file; open the "
                           "extent file named on line " +
                           std::to_string(descriptor_.extents()[0].line_number) + " instead");

    Access access = file.access();
    files_.push_back(std::make_unique<File>(std::move(file)));
    open_extent_files(access);
}

std::filesystem::path VmdkDisk::extent_path(const ExtentLine& line) const
{
    std::filesystem::path file(line.file);
    if (file.is_absolute())
        return file;
    return path_.parent_path() / file;
}

std::string VmdkDisk::extent_name(const ExtentLine& line) const
{
    return extent_path(line).string();
}

// Opens every extent file of a separate descriptor with `access`, checks it against its extent line
// and collects its data runs.
void VmdkDisk::open_extent_files(Access access)
{
    Layout layout = layout_of_create_type(descriptor_.create_type(), name_);
    std::string_view expected_type = data_extent_type(layout);
    std::vector<FileIdentity> identities = {identity_of(*files_[0])};
    std::vector<std::size_t> identity_lines = {0};

    std::uint64_t guest_sector = 0;
    for (const ExtentLine& line : descriptor_.extents()) {
        std::string location = where(name_, line);
        if (is_unsupported_extent_type(line.type))
            throw UnsupportedInput(location + ": extent: type " + line.type +
                                   " is not supported; convert the disk first with: " + conversion_hint(name_));
        if (line.type != "ZERO" && line.type != expected_type)
            throw InvalidInput(location + ": extent: type " + line.type + " does not belong to createType \"" +
                               descriptor_.create_type() + "\", whose data extents are " + std::string(expected_type) +
                               "; correct the extent type or the createType");
        check_extent_access(line, access, location);
        if (line.sectors > UINT64_MAX / 512 - guest_sector)
            throw InvalidInput(location + ": extent: the extents add up to more sectors than a 64-bit byte count "
                                          "can address; correct the sector counts");

        Extent extent{line, std::nullopt, guest_sector, 0, 0};
        guest_sector += line.sectors;
        if (line.type == "ZERO") {
            extents_.push_back(extent);
            continue;
        }

        std::filesystem::path path = extent_path(line);
        std::string name = path.string();
        struct stat status {};
        if (::stat(path.c_str(), &status) != 0) {
            int saved = errno;
            if (saved == ENOENT || saved == ENOTDIR)
                throw InvalidInput(location + ": extent: file \"" + line.file + "\" not found (looked for " + name +
                                   "); put the extent file next to the descriptor or correct its name");
            throw IoError(name + ": stat failed: " + std::strerror(saved));
        }
        if (!S_ISREG(status.st_mode))
            throw UnsupportedInput(location + ": extent: \"" + line.file +
                                   "\" is not a regular file; vmcrypt rewrites only extents stored in files");
        FileIdentity identity{status.st_dev, status.st_ino};
        for (std::size_t i = 0; i < identities.size(); ++i) {
            if (identities[i] != identity)
                continue;
            if (i == 0)
                throw InvalidInput(location + ": extent: file \"" + line.file +
                                   "\" is the descriptor file itself; only monolithicSparse keeps its descriptor "
                                   "inside its extent, so correct the file name");
            throw UnsupportedInput(location + ": extent: file \"" + line.file + "\" is also the file of line " +
                                   std::to_string(identity_lines[i]) + "; vmcrypt supports one extent per file");
        }
        identities.push_back(identity);
        identity_lines.push_back(line.line_number);

        File file = File::open(path, access);
        std::uint64_t file_size = file.size();
        std::size_t file_index = files_.size();
        files_.push_back(std::make_unique<File>(std::move(file)));
        const File& opened = *files_.back();

        std::vector<DataRun> runs;
        if (line.type == "SPARSE") {
            std::vector<std::uint8_t> header_bytes(sparse_header_size);
            header_bytes.resize(opened.read_at(0, header_bytes));
            SparseHeader header = parse_sparse_header(header_bytes, file_size, name);
            if (header.capacity != line.sectors)
                throw InvalidInput(location + ": extent: sector count " + std::to_string(line.sectors) +
                                   " differs from the capacity " + std::to_string(header.capacity) +
                                   " in the sparse header of \"" + line.file +
                                   "\"; correct the sector count or restore the extent file");
            if (header.descriptor_offset != 0 &&
                !is_all_zero(read_bytes(opened, header.descriptor_offset * 512, header.descriptor_size * 512)))
                throw InvalidInput(name + ": embedded descriptor: not empty, although the extent belongs to the "
                                          "split disk " + name_ +
                                   "; a disk has one descriptor, so open this file on its own or clear its "
                                   "embedded descriptor");
            SparseExtentScan scan = scan_with_hint(opened, header, file_index, extent.first_sector, name);
            runs = std::move(scan.runs);
            extent.allocated_bytes = scan.allocated_bytes;
        } else {
            std::uint64_t needed = (line.offset + line.sectors) * 512;
            if (file_size < needed)
                throw InvalidInput(location + ": extent: file \"" + line.file + "\" is " + std::to_string(file_size) +
                                   " bytes, shorter than the " + std::to_string(needed) +
                                   " bytes the extent line needs (offset + size): either the extent line's sector "
                                   "count or offset is wrong (correct it to the sizes the disk was made with) or the "
                                   "file is truncated (copy it again)");
            FlatExtentScan scan =
                scan_flat_extent(opened, line.offset * 512, line.sectors * 512, file_index, extent.first_sector);
            runs = std::move(scan.runs);
            extent.allocated_bytes = scan.allocated_bytes;
        }

        for (const DataRun& run : runs)
            append_run(runs_, run);
        extent.file_index = file_index;
        extent.file_size = file_size;
        extents_.push_back(extent);
    }
    capacity_sectors_ = guest_sector;
}

}  // namespace vmcrypt::vmdk

namespace vmcrypt {

std::unique_ptr<Disk> open_vmdk(const std::filesystem::path& path, Access access)
{
    return vmdk::VmdkDisk::open(File::open(path, access), path);
}

}  // namespace vmcrypt
