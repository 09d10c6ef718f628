// Format probing for open_disk(): the first bytes of the file decide the format.

#include "formats/open_disk.hpp"

#include "core/error.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "formats/vmdk/descriptor.hpp"
#include "formats/vmdk/vmdk_disk.hpp"

#include <cstring>

namespace vmcrypt {

namespace {

// seSparse constant header magic 0x00000000cafebabe, little-endian.
constexpr std::uint8_t sesparse_magic[8] = {0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0};

bool starts_with(const std::string& bytes, const void* magic, std::size_t length)
{
    return bytes.size() >= length && std::memcmp(bytes.data(), magic, length) == 0;
}

std::string read_head(const File& file, std::size_t length)
{
    std::string bytes(length, '\0');
    bytes.resize(file.read_at(0, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()}));
    return bytes;
}

[[noreturn]] void throw_not_a_disk(const std::string& name)
{
    throw UnsupportedInput(name + ": not a VMDK or qcow2 disk (neither a \"KDMV\" sparse extent, a text descriptor "
                                  "nor a \"QFI\\xfb\" qcow2 header); name the disk's .vmdk descriptor or .qcow2 file");
}

void check_path(const std::filesystem::path& path)
{
    std::error_code error;
    if (!std::filesystem::exists(path, error))
        throw InvalidInput(path.string() + ": file not found; check the path of the disk");
    if (std::filesystem::is_directory(path, error))
        throw InvalidInput(path.string() + ": is a folder; name the disk's .vmdk or .qcow2 file");
}

}  // namespace

void check_disk_file(const std::filesystem::path& path)
{
    check_path(path);
    File file = File::open(path, Access::read_only);
    std::string head = read_head(file, 8);
    if (head.starts_with("KDMV") || head.starts_with("COWD") || head.starts_with("QFI\xfb") ||
        starts_with(head, sesparse_magic, sizeof sesparse_magic))
        return;
    std::uint64_t size = file.size();
    if (size < vmdk::max_descriptor_file_size &&
        vmdk::looks_like_descriptor(read_head(file, static_cast<std::size_t>(size))))
        return;
    throw_not_a_disk(path.string());
}

std::unique_ptr<Disk> open_disk(const std::filesystem::path& path, Access access)
{
    check_path(path);
    File file = File::open(path, access);
    std::string head = read_head(file, 8);
    std::string name = path.string();

    if (head.starts_with("KDMV"))
        return vmdk::VmdkDisk::open(std::move(file), path);
    if (head.starts_with("COWD"))
        throw UnsupportedInput(name + ": an ESXi vmfsSparse (COWD) snapshot delta extent is not supported; "
                                      "consolidate the snapshots on the host first");
    if (starts_with(head, sesparse_magic, sizeof sesparse_magic))
        throw UnsupportedInput(name + ": an ESXi seSparse snapshot delta extent is not supported; consolidate the "
                                      "snapshots on the host first");
    if (head.starts_with("QFI\xfb"))
        return qcow2::QcowDisk::open(std::move(file), path);

    std::uint64_t size = file.size();
    if (size < vmdk::max_descriptor_file_size) {
        std::string text = read_head(file, static_cast<std::size_t>(size));
        if (vmdk::looks_like_descriptor(text))
            return vmdk::VmdkDisk::open(std::move(file), path);
    }
    throw_not_a_disk(name);
}

}  // namespace vmcrypt
