#include "formats/qcow2/backing_chain.hpp"

#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/text/shell_words.hpp"
#include "formats/qcow2/qcow2_disk.hpp"

#include <set>

namespace vmcrypt::qcow2 {

namespace {

std::filesystem::path resolve_backing(const std::filesystem::path& image, const std::string& name)
{
    std::filesystem::path backing(name);
    if (backing.is_absolute())
        return backing;
    return image.parent_path() / backing;
}

std::string backing_format_of(const Header& header)
{
    const HeaderExtension* extension = header.find_extension(ext_backing_format);
    if (!extension)
        return {};
    return std::string(extension->data.begin(), extension->data.end());
}

// Rejects a qcow2 layer that consolidation must not read or change.
void check_layer_state(const ChainLayer& layer)
{
    const Header& header = layer.header;
    const std::string name = layer.name();
    if (std::uint64_t unknown = header.incompatible_features & ~incompat_known)
        throw UnsupportedInput(name + ": qcow2 header: unknown incompatible features (" + hex(unknown) +
                               "); vmcrypt cannot read this image safely");
    if (header.incompatible_features & incompat_corrupt)
        throw WrongDiskState(name + ": qcow2 header: the corrupt bit is set; repair the image with: qemu-img check -r all " +
                             name);
    if (header.incompatible_features & incompat_dirty)
        throw WrongDiskState(name + ": qcow2 header: the dirty bit is set (QEMU is using the image, or stopped "
                                    "without writing back lazy refcounts); if no VM uses it, repair it with: "
                                    "qemu-img check -r all " + name);
    if (header.incompatible_features & incompat_data_file)
        throw UnsupportedInput(name + ": qcow2 header: the image keeps its data in an external data file, which "
                                      "consolidate-snapshots does not merge; merge the chain with: qemu-img commit");
    if (header.crypt_method != 0 || header.find_extension(ext_vmcrypt))
        throw WrongDiskState(name + ": the image is encrypted (crypt_method " + std::to_string(header.crypt_method) +
                             "); consolidate-snapshots merges plaintext chains only, so decrypt every layer first "
                             "(vmcrypt decrypt, or qemu-img convert for QEMU's own encryption)");
}

File open_locked(const std::filesystem::path& path, Access access)
{
    File file = File::open(path, access);
    if (access == Access::read_write) {
        lock_exclusive(file);
    } else if (std::optional<std::string> holder = find_lock_holder(file)) {
        throw DiskInUse(path.string() + ": the image is in use (" + *holder + "); shut down the VM and retry");
    }
    return file;
}

}  // namespace

std::filesystem::path absolute_path(const std::filesystem::path& path)
{
    std::filesystem::path absolute = std::filesystem::absolute(path).lexically_normal();
    std::error_code error;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, error);
    return error ? absolute : canonical;
}

bool has_qcow2_magic(const std::filesystem::path& path)
{
    try {
        File file = File::open(path, Access::read_only);
        std::uint8_t bytes[4] = {};
        return file.read_exact(0, bytes) && bytes[0] == 'Q' && bytes[1] == 'F' && bytes[2] == 'I' && bytes[3] == 0xfb;
    } catch (const Error&) {
        return false;
    }
}

std::vector<OverlayLayer> BackingChain::views() const
{
    std::vector<OverlayLayer> result;
    for (const ChainLayer& layer : layers)
        result.push_back(OverlayLayer{layer.file.get(), layer.format == LayerFormat::qcow2 ? &layer.header : nullptr,
                                      layer.name()});
    return result;
}

std::vector<std::uint64_t> BackingChain::sizes() const
{
    std::vector<std::uint64_t> result;
    for (const ChainLayer& layer : layers)
        result.push_back(layer.size);
    return result;
}

BackingChain open_backing_chain(const std::filesystem::path& top, Access access)
{
    std::vector<ChainLayer> top_down;
    std::set<std::filesystem::path> seen;
    std::filesystem::path path = absolute_path(top);
    LayerFormat format = LayerFormat::qcow2;

    for (;;) {
        if (top_down.size() >= max_backing_depth)
            throw UnsupportedInput(top.string() + ": the backing chain is deeper than " +
                                   std::to_string(max_backing_depth) + " images");
        if (!seen.insert(path).second)
            throw InvalidInput(top_down.back().name() + ": backing file " + path.string() +
                               " is already in the chain above it, so the chain loops; point the image at its real "
                               "parent with: qemu-img rebase -u -b PARENT -F FORMAT " + top_down.back().name());

        ChainLayer layer;
        layer.path = path;
        layer.format = format;
        layer.file = std::make_unique<File>(open_locked(path, access));
        if (format == LayerFormat::raw) {
            layer.size = layer.file->size();
            top_down.push_back(std::move(layer));
            break;
        }

        std::vector<std::uint8_t> cluster0 = read_cluster0(*layer.file);
        layer.header = parse_header(cluster0, layer.file->size(), layer.name());
        layer.size = layer.header.size;
        check_layer_state(layer);
        layer.snapshots = read_snapshots(*layer.file, layer.header, layer.name());
        const Header& header = layer.header;
        if (header.backing_file.empty()) {
            top_down.push_back(std::move(layer));
            break;
        }

        std::filesystem::path backing = absolute_path(resolve_backing(path, header.backing_file));
        std::error_code error;
        if (!std::filesystem::is_regular_file(backing, error))
            throw InvalidInput(layer.name() + ": backing file \"" + header.backing_file + "\" (" + backing.string() +
                               ") not found; restore it, or name its new place with: qemu-img rebase -u -b NEWPATH "
                               "-F FORMAT " + layer.name());
        std::string format_name = backing_format_of(header);
        if (format_name.empty()) {
            if (!has_qcow2_magic(backing))
                throw UnsupportedInput(layer.name() + ": the header does not record the format of backing file " +
                                       backing.string() + " and it is not qcow2; record it with: qemu-img rebase -u -b " +
                                       shell_quote(header.backing_file) + " -F raw " + layer.name());
            format_name = "qcow2";
        }
        if (format_name == "qcow2")
            format = LayerFormat::qcow2;
        else if (format_name == "raw")
            format = LayerFormat::raw;
        else
            throw UnsupportedInput(layer.name() + ": backing file " + backing.string() + " has format \"" +
                                   format_name + "\"; consolidate-snapshots merges qcow2 chains over a qcow2 or raw "
                                   "base only");
        top_down.push_back(std::move(layer));
        path = backing;
    }

    BackingChain chain;
    for (auto it = top_down.rbegin(); it != top_down.rend(); ++it)
        chain.layers.push_back(std::move(*it));
    return chain;
}

std::vector<std::string> find_other_children(const BackingChain& chain)
{
    std::set<std::filesystem::path> folders;
    std::set<std::filesystem::path> members;
    for (const ChainLayer& layer : chain.layers) {
        folders.insert(layer.path.parent_path());
        members.insert(layer.path);
    }

    std::vector<std::string> children;
    for (const std::filesystem::path& folder : folders) {
        std::error_code error;
        for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
            std::error_code entry_error;
            const std::filesystem::path candidate = absolute_path(entry.path());
            if (!entry.is_regular_file(entry_error) || members.count(candidate) || !has_qcow2_magic(candidate))
                continue;
            std::string backing_name;
            try {
                File file = File::open(candidate, Access::read_only);
                backing_name = parse_header(read_cluster0(file), file.size(), candidate.string()).backing_file;
            } catch (const Error&) {
                continue;  // not an image this chain can be the backing file of
            }
            if (backing_name.empty())
                continue;
            const std::filesystem::path backing = absolute_path(resolve_backing(candidate, backing_name));
            if (members.count(backing))
                children.push_back(candidate.string() + " (backing file " + backing.string() + ")");
        }
    }
    std::sort(children.begin(), children.end());
    return children;
}

}  // namespace vmcrypt::qcow2
