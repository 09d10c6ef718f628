#include "formats/vmdk/esxi_delta.hpp"

#include "core/error.hpp"
#include "formats/vmdk/esxi_extents.hpp"
#include "formats/vmdk/vmdk_disk.hpp"

#include <cerrno>
#include <cstring>
#include <sys/stat.h>

namespace vmcrypt::vmdk {

bool is_esxi_delta_type(std::string_view create_type)
{
    return create_type == "vmfsSparse" || create_type == "seSparse";
}

std::unique_ptr<EsxiDelta> open_esxi_delta(File descriptor_file, const std::filesystem::path& path)
{
    std::string name = path.string();
    std::uint64_t size = descriptor_file.size();
    if (size >= max_descriptor_file_size)
        throw InvalidInput(name + ": descriptor file is " + std::to_string(size) +
                           " bytes, but a descriptor file must be smaller than 1 MiB");
    std::string text(static_cast<std::size_t>(size), '\0');
    text.resize(descriptor_file.read_at(0, {reinterpret_cast<std::uint8_t*>(text.data()), text.size()}));

    auto delta = std::make_unique<EsxiDelta>();
    delta->descriptor = Descriptor::parse(text, name);
    const std::string& create_type = delta->descriptor.create_type();
    std::string extent_type = create_type == "vmfsSparse" ? "VMFSSPARSE" : "SESPARSE";
    Access access = descriptor_file.access();
    delta->files.push_back(std::make_unique<File>(std::move(descriptor_file)));

    std::uint64_t guest_sector = 0;
    for (const ExtentLine& line : delta->descriptor.extents()) {
        std::string location = name + ": line " + std::to_string(line.line_number);
        if (line.type != extent_type)
            throw InvalidInput(location + ": extent: type " + line.type + " does not belong to createType \"" +
                               create_type + "\", whose extents are " + extent_type +
                               "; correct the extent type or the createType");
        if (line.access == "NOACCESS")
            throw UnsupportedInput(location + ": extent: access is NOACCESS, so its data cannot be read");
        if (line.sectors > (UINT64_MAX / 512) - guest_sector)
            throw InvalidInput(location + ": extent: the extents add up to more sectors than a 64-bit byte count "
                                          "can address; correct the sector counts");

        std::filesystem::path extent_path(line.file);
        if (extent_path.is_relative())
            extent_path = path.parent_path() / extent_path;
        struct stat status {};
        if (::stat(extent_path.c_str(), &status) != 0) {
            int saved = errno;
            if (saved == ENOENT || saved == ENOTDIR)
                throw InvalidInput(location + ": extent: file \"" + line.file + "\" not found (looked for " +
                                   extent_path.string() + "); put the delta's extent file next to its descriptor");
            throw IoError(extent_path.string() + ": stat failed: " + std::strerror(saved));
        }
        if (!S_ISREG(status.st_mode))
            throw UnsupportedInput(location + ": extent: \"" + line.file + "\" is not a regular file");

        delta->files.push_back(std::make_unique<File>(File::open(extent_path, access)));
        const File& extent = *delta->files.back();
        std::vector<GuestRun> runs = extent_type == "VMFSSPARSE"
                                         ? read_cowd_extent(extent, line.sectors, guest_sector, extent_path.string())
                                         : read_sesparse_extent(extent, line.sectors, guest_sector, extent_path.string());
        for (const GuestRun& run : runs)
            append_guest_run(delta->runs, run);
        guest_sector += line.sectors;
    }
    delta->capacity_sectors = guest_sector;
    return delta;
}

}  // namespace vmcrypt::vmdk
