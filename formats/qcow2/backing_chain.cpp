#include "formats/qcow2/backing_chain.hpp"

#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/text/shell_words.hpp"
#include "formats/qcow2/qcow2_disk.hpp"

#include <map>
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

// The backing file name of the qcow2 image `path`, or "" when it has none or is not a readable qcow2
// image (then this chain cannot be its backing file).
std::string backing_name_of(const std::filesystem::path& path)
{
    if (!has_qcow2_magic(path))
        return {};
    try {
        File file = File::open(path, Access::read_only);
        return parse_header(read_cluster0(file), file.size(), path.string()).backing_file;
    } catch (const Error&) {
        return {};
    }
}

}  // namespace

File open_image_locked(const std::filesystem::path& path, Access access)
{
    File file = File::open(path, access);
    if (access == Access::read_write) {
        lock_exclusive(file);
    } else if (std::optional<std::string> holder = find_lock_holder(file)) {
        throw DiskInUse(path.string() + ": the image is in use (" + *holder + "); shut down the VM and retry");
    }
    return file;
}

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
        layer.file = std::make_unique<File>(open_image_locked(path, access));
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

std::vector<BranchImage> find_branch_images(const BackingChain& chain)
{
    std::set<std::filesystem::path> known;  // the chain's layers and the branch images found so far
    std::set<std::filesystem::path> pending_folders;
    for (const ChainLayer& layer : chain.layers) {
        known.insert(layer.path);
        pending_folders.insert(layer.path.parent_path());
    }

    // Every qcow2 image with a backing file in the folders searched, with the backing file resolved.
    std::map<std::filesystem::path, std::filesystem::path> backing_of;
    std::set<std::filesystem::path> searched;
    std::vector<BranchImage> branches;
    while (!pending_folders.empty()) {
        for (const std::filesystem::path& folder : pending_folders) {
            searched.insert(folder);
            std::error_code error;
            std::filesystem::directory_iterator entry(folder, error);
            for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
                std::error_code entry_error;
                if (!entry->is_regular_file(entry_error))
                    continue;
                const std::filesystem::path candidate = absolute_path(entry->path());
                const std::string name = backing_name_of(candidate);
                if (!name.empty())
                    backing_of.emplace(candidate, absolute_path(resolve_backing(candidate, name)));
            }
        }
        pending_folders.clear();

        // Each pass adds the images whose backing file is known, so parents come before children.
        for (bool added = true; added;) {
            added = false;
            std::vector<BranchImage> found;
            for (const auto& [image, backing] : backing_of)
                if (!known.count(image) && known.count(backing))
                    found.push_back(BranchImage{image, backing});
            for (const BranchImage& image : found) {
                known.insert(image.path);
                branches.push_back(image);
                if (!searched.count(image.path.parent_path()))
                    pending_folders.insert(image.path.parent_path());
                added = true;
            }
        }
    }
    return branches;
}

}  // namespace vmcrypt::qcow2
