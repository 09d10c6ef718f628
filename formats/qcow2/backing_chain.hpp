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

// Lists images in the chain's folders that use a layer of the chain as their backing file, other than the
// chain's own next layer, as "IMAGE (backing file LAYER)". Merging would change what they read.
std::vector<std::string> find_other_children(const BackingChain& chain);

// True when `path` starts with the qcow2 magic.
bool has_qcow2_magic(const std::filesystem::path& path);

// Made absolute and normalized, with symbolic links resolved where the file exists.
std::filesystem::path absolute_path(const std::filesystem::path& path);

}  // namespace vmcrypt::qcow2
