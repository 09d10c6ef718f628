#pragma once
// The guest view of a qcow2 backing chain as a list of pieces: which layer supplies each guest byte
// range that some overlay defines, and how (stored data, a compressed cluster, or zeros).
//
// The rules are QEMU's (docs/interop/qcow2.txt, QEMU 7.2). The newest layer that allocates a cluster or
// subcluster, or marks it zero, supplies it, and an unallocated one reads from the backing file. A
// guest offset at or past a backing file's size reads as zeros there. The bottom layer (the base) is never a
// source: ranges no overlay defines keep what the base stores.

#include "core/io/file.hpp"
#include "formats/qcow2/cluster_map.hpp"
#include "formats/qcow2/header.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

enum class PieceKind : std::uint8_t { data, compressed, zero };

// A guest byte range and where its bytes come from.
struct GuestPiece {
    std::uint64_t guest_offset = 0;
    std::uint64_t length = 0;
    PieceKind kind = PieceKind::zero;
    std::size_t layer = 0;             // index into the chain, base first
    std::uint64_t host_offset = 0;     // data: host offset of guest_offset in that layer's file
    std::uint64_t compressed_entry = 0;  // compressed: the layer's raw L2 entry
    std::uint64_t cluster_offset = 0;  // compressed: guest offset of the compressed cluster's first byte
};

// One qcow2 layer of a chain as composition input.
struct OverlayLayer {
    const File* file = nullptr;
    const Header* header = nullptr;
    std::string name;
};

// Lists the guest ranges one overlay defines (allocated, compressed or zero), in guest order, clipped to
// its size. Validates the tables first (walk_cluster_tables). Throws InvalidInput naming the entry.
std::vector<GuestPiece> overlay_pieces(const OverlayLayer& layer, std::size_t layer_index);

// Composes the overlays (chain index 1 to n-1) into the pieces that give
// the top's guest view of [0, sizes.back()); the newest layer wins. `layers` and `sizes` list every
// layer, base first; the base's entry is not read.
std::vector<GuestPiece> compose_chain(const std::vector<OverlayLayer>& layers, const std::vector<std::uint64_t>& sizes);

// The stored data (data and compressed pieces) that the top reads through from the layers below it,
// the base (a qcow2 image) included: what the top must store itself to read the same without its
// backing file. Zeros need no piece, because an unallocated cluster of an image without a backing
// file reads as zeros.
std::vector<GuestPiece> stream_pieces(const std::vector<OverlayLayer>& layers, const std::vector<std::uint64_t>& sizes);

// Sums of the pieces' lengths by kind: stored (data and compressed) and zero.
struct PieceTotals {
    std::uint64_t data_bytes = 0;
    std::uint64_t zero_bytes = 0;
};
PieceTotals piece_totals(const std::vector<GuestPiece>& pieces);

// Reads the guest bytes of a piece from its layer: `layers[piece.layer]`. The last compressed
// cluster read is kept inflated, because consecutive pieces often come from the same one.
class PieceReader {
public:
    explicit PieceReader(const std::vector<OverlayLayer>& layers) : layers_(layers) {}
    // Fills `out` with the guest bytes from `offset`, which lies inside `piece`.
    void read(const GuestPiece& piece, std::uint64_t offset, std::span<std::uint8_t> out);

    // Starts reading a data piece's bytes into the page cache, so that read() finds them there.
    void prefetch(const GuestPiece& piece) const;

private:
    const std::vector<OverlayLayer>& layers_;
    std::size_t cached_layer_ = 0;
    std::uint64_t cached_entry_ = 0;
    std::vector<std::uint8_t> cached_cluster_;
};

}  // namespace vmcrypt::qcow2
