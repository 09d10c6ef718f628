#pragma once
// A qcow2 backing chain (base <- overlays <- top), opened and validated for consolidate-snapshots.
//
// Backing file names are resolved as QEMU 7.2 resolves them: a relative name is relative to the folder
// of the image that names it. The format of each backing file comes from the backing format header
// extension. Without it, only the qcow2 magic is probed for, because any file without a magic would
// pass as raw.

#include "core/io/file.hpp"
#include "formats/qcow2/guest_view.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/snapshots.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

inline constexpr std::size_t max_backing_depth = 64;

enum class LayerFormat { qcow2, raw };

struct ChainLayer {
    std::filesystem::path path;  // absolute
    LayerFormat format = LayerFormat::qcow2;
    std::unique_ptr<File> file;
    Header header;  // qcow2 layers only
    std::vector<Snapshot> snapshots;
    std::uint64_t size = 0;  // guest bytes

    std::string name() const { return path.string(); }
};

struct BackingChain {
    std::vector<ChainLayer> layers;  // base first, the given image last

    ChainLayer& base() { return layers.front(); }
    ChainLayer& top() { return layers.back(); }
    // Every layer as input for compose_chain(), base first. A raw base has no header.
    std::vector<OverlayLayer> views() const;
    std::vector<std::uint64_t> sizes() const;
};

// Opens the chain below the qcow2 image `top`. With Access::read_write every file is opened read-write
// and locked as QEMU locks images, so a running QEMU is reported and none can start meanwhile. With
// read_only a lock that QEMU holds is only reported. Every qcow2 layer must be plaintext, without the
// dirty or corrupt bit, an external data file or unknown incompatible features. Throws InvalidInput for a
// missing backing file or a loop, UnsupportedInput for another backing format, WrongDiskState for an
// encrypted or damaged layer and DiskInUse for a locked one, each naming the file and the fix.
BackingChain open_backing_chain(const std::filesystem::path& top, Access access);

// A qcow2 image outside the chain that reads through a layer of it: directly (another child of a layer)
// or through other such images (a descendant of that child).
struct BranchImage {
    std::filesystem::path path;     // absolute
    std::filesystem::path backing;  // the image it names as its backing file, absolute
    std::string description() const { return path.string() + " (backing file " + backing.string() + ")"; }
};

// Finds the images that use a layer of the chain, other than the chain's own next layer, and the images
// that use those in turn. It searches the folders of the chain's layers and of every image found, and
// resolves each backing file name (relative, ../ or absolute, symbolic links followed) as QEMU does.
// An image elsewhere is not found. Parents come before their children. Merging would change what
// every one of them reads.
std::vector<BranchImage> find_branch_images(const BackingChain& chain);

// Opens an image for consolidate-snapshots. With Access::read_write it takes QEMU's exclusive image lock;
// with read_only it only checks for one. Throws DiskInUse naming the holder when QEMU has it open.
File open_image_locked(const std::filesystem::path& path, Access access);

// True when `path` starts with the qcow2 magic.
bool has_qcow2_magic(const std::filesystem::path& path);

// Made absolute and normalized, with symbolic links resolved where the file exists.
std::filesystem::path absolute_path(const std::filesystem::path& path);

}  // namespace vmcrypt::qcow2
