#include "formats/qcow2/guest_view.hpp"

#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/compression.hpp"

#include <algorithm>
#include <map>

namespace vmcrypt::qcow2 {

namespace {

// Appends a piece, merging it into the previous one when both continue each other.
void append_piece(std::vector<GuestPiece>& pieces, const GuestPiece& piece)
{
    if (piece.length == 0)
        return;
    if (!pieces.empty()) {
        GuestPiece& last = pieces.back();
        bool adjacent = last.guest_offset + last.length == piece.guest_offset && last.kind == piece.kind &&
                        last.layer == piece.layer;
        bool continues = piece.kind == PieceKind::zero ||
                         (piece.kind == PieceKind::data && last.host_offset + last.length == piece.host_offset);
        if (adjacent && continues) {
            last.length += piece.length;
            return;
        }
    }
    pieces.push_back(piece);
}

// Guest ranges already supplied by newer layers: start -> end, disjoint, adjacent ranges merged.
class CoveredRanges {
public:
    // Calls `emit(begin, end)` for each part of [begin, end) not covered yet, then covers all of it.
    template <typename Emit>
    void take(std::uint64_t begin, std::uint64_t end, Emit&& emit)
    {
        if (begin >= end)
            return;
        auto it = ranges_.upper_bound(begin);
        if (it != ranges_.begin() && std::prev(it)->second >= begin)
            --it;
        std::uint64_t cursor = begin;
        std::uint64_t merged_begin = begin;
        std::uint64_t merged_end = end;
        while (it != ranges_.end() && it->first <= end) {
            if (it->first > cursor)
                emit(cursor, std::min(it->first, end));
            cursor = std::max(cursor, it->second);
            merged_begin = std::min(merged_begin, it->first);
            merged_end = std::max(merged_end, it->second);
            it = ranges_.erase(it);
        }
        if (cursor < end)
            emit(cursor, end);
        ranges_[merged_begin] = merged_end;
    }

private:
    std::map<std::uint64_t, std::uint64_t> ranges_;
};

}  // namespace

std::vector<GuestPiece> overlay_pieces(const OverlayLayer& layer, std::size_t layer_index)
{
    const File& file = *layer.file;
    const Header& header = *layer.header;
    ClusterMap map = walk_cluster_tables(file, header, nullptr, layer.name);  // validates every entry

    const std::uint64_t cluster_size = header.cluster_size();
    const std::uint64_t entry_size = header.l2_entry_size();
    const std::uint64_t entries = header.l2_entries();
    const std::uint64_t subcluster_size = cluster_size / subclusters_per_cluster;
    const bool extended = header.extended_l2();
    std::vector<GuestPiece> pieces;

    auto add = [&](std::uint64_t begin, std::uint64_t length, PieceKind kind, std::uint64_t host, std::uint64_t entry,
                   std::uint64_t cluster_begin) {
        if (begin >= header.size)
            return;
        length = std::min(length, header.size - begin);
        append_piece(pieces, GuestPiece{begin, length, kind, layer_index, host, entry, cluster_begin});
    };

    std::vector<std::uint8_t> table(cluster_size);
    for (std::uint64_t i = 0; i < map.l2_tables.size(); ++i) {
        if (map.l2_tables[i] == 0)
            continue;
        if (!file.read_exact(map.l2_tables[i], table))
            throw InvalidInput(layer.name + ": L2 table " + std::to_string(i) + " is past the end of the file");
        for (std::uint64_t j = 0; j < entries; ++j) {
            const std::uint64_t guest_cluster = i * entries + j;
            if (guest_cluster >= header.guest_clusters())
                break;
            const std::uint64_t begin = guest_cluster * cluster_size;
            const std::uint64_t entry = load_be64(table, j * entry_size);
            const std::uint64_t host = entry & l2_offset_mask;
            if (entry & flag_compressed) {
                add(begin, cluster_size, PieceKind::compressed, 0, entry, begin);
                continue;
            }
            if (!extended) {
                if (entry & flag_zero)
                    add(begin, cluster_size, PieceKind::zero, 0, 0, 0);
                else if (host != 0)
                    add(begin, cluster_size, PieceKind::data, host, 0, 0);
                continue;
            }
            const std::uint64_t bitmap = load_be64(table, j * entry_size + 8);
            for (unsigned s = 0; s < subclusters_per_cluster; ++s) {
                const std::uint64_t sub_begin = begin + s * subcluster_size;
                if (bitmap & (1ull << s))
                    add(sub_begin, subcluster_size, PieceKind::data, host + s * subcluster_size, 0, 0);
                else if (bitmap & (1ull << (32 + s)))
                    add(sub_begin, subcluster_size, PieceKind::zero, 0, 0, 0);
            }
        }
    }
    return pieces;
}

namespace {

// Takes the pieces of layers `newest` down to `oldest` (chain indexes) into `result`, newest first,
// where `covered` does not cover them yet. `kinds` filters the pieces kept.
void take_layers(const std::vector<OverlayLayer>& layers, const std::vector<std::uint64_t>& sizes, std::size_t newest,
                 std::size_t oldest, CoveredRanges& covered, bool stored_only, std::vector<GuestPiece>& result)
{
    const std::uint64_t view_size = sizes.back();
    for (std::size_t layer = newest + 1; layer-- > oldest;) {
        for (const GuestPiece& piece : overlay_pieces(layers[layer], layer)) {
            const std::uint64_t end = std::min(piece.guest_offset + piece.length, view_size);
            covered.take(piece.guest_offset, end, [&](std::uint64_t begin, std::uint64_t part_end) {
                if (stored_only && piece.kind == PieceKind::zero)
                    return;
                GuestPiece part = piece;
                part.guest_offset = begin;
                part.length = part_end - begin;
                if (part.kind == PieceKind::data)
                    part.host_offset = piece.host_offset + (begin - piece.guest_offset);
                result.push_back(part);
            });
        }
        // A read that falls through to this layer past its end reads zeros, whatever lies below.
        if (sizes[layer] < view_size)
            covered.take(sizes[layer], view_size, [&](std::uint64_t begin, std::uint64_t end) {
                if (!stored_only)
                    result.push_back(GuestPiece{begin, end - begin, PieceKind::zero, layer, 0, 0, 0});
            });
    }
}

std::vector<GuestPiece> sorted_and_merged(std::vector<GuestPiece> pieces)
{
    std::sort(pieces.begin(), pieces.end(),
              [](const GuestPiece& a, const GuestPiece& b) { return a.guest_offset < b.guest_offset; });
    std::vector<GuestPiece> merged;
    merged.reserve(pieces.size());
    for (const GuestPiece& piece : pieces)
        append_piece(merged, piece);
    return merged;
}

}  // namespace

std::vector<GuestPiece> compose_chain(const std::vector<OverlayLayer>& layers, const std::vector<std::uint64_t>& sizes)
{
    CoveredRanges covered;
    std::vector<GuestPiece> result;
    take_layers(layers, sizes, layers.size() - 1, 1, covered, false, result);
    return sorted_and_merged(std::move(result));
}

std::vector<GuestPiece> stream_pieces(const std::vector<OverlayLayer>& layers, const std::vector<std::uint64_t>& sizes)
{
    CoveredRanges covered;
    std::vector<GuestPiece> top;
    take_layers(layers, sizes, layers.size() - 1, layers.size() - 1, covered, false, top);
    std::vector<GuestPiece> result;
    take_layers(layers, sizes, layers.size() - 2, 0, covered, true, result);
    return sorted_and_merged(std::move(result));
}

PieceTotals piece_totals(const std::vector<GuestPiece>& pieces)
{
    PieceTotals totals;
    for (const GuestPiece& piece : pieces)
        (piece.kind == PieceKind::zero ? totals.zero_bytes : totals.data_bytes) += piece.length;
    return totals;
}

void PieceReader::read(const GuestPiece& piece, std::uint64_t offset, std::span<std::uint8_t> out)
{
    const std::uint64_t skip = offset - piece.guest_offset;
    if (piece.kind == PieceKind::zero) {
        std::fill(out.begin(), out.end(), 0);
        return;
    }
    const OverlayLayer& layer = layers_[piece.layer];
    if (piece.kind == PieceKind::data) {
        // A file may end inside its last cluster (QEMU skips writing a zero tail); those bytes read as zeros.
        std::size_t got = layer.file->read_at(piece.host_offset + skip, out);
        std::fill(out.begin() + static_cast<std::ptrdiff_t>(got), out.end(), 0);
        return;
    }
    if (cached_cluster_.empty() || cached_layer_ != piece.layer || cached_entry_ != piece.compressed_entry) {
        CompressedCluster cluster = decode_compressed_entry(piece.compressed_entry, layer.header->cluster_bits);
        std::vector<std::uint8_t> stored(static_cast<std::size_t>(cluster.stored_bytes));
        stored.resize(layer.file->read_at(cluster.host_offset, stored));
        cached_cluster_ = decompress_cluster(stored, layer.header->compression_type, layer.header->cluster_size(),
                                             layer.name + ": compressed cluster at guest offset " +
                                                 std::to_string(piece.cluster_offset));
        cached_layer_ = piece.layer;
        cached_entry_ = piece.compressed_entry;
    }
    const std::uint64_t in_cluster = offset - piece.cluster_offset;
    std::copy_n(cached_cluster_.begin() + static_cast<std::ptrdiff_t>(in_cluster), out.size(), out.begin());
}

void PieceReader::prefetch(const GuestPiece& piece) const
{
    if (piece.kind == PieceKind::data)
        layers_[piece.layer].file->prefetch(piece.host_offset, piece.length);
}

}  // namespace vmcrypt::qcow2
