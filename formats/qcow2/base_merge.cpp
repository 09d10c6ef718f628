#include "formats/qcow2/base_merge.hpp"

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/compression.hpp"

#include <fcntl.h>

#include <algorithm>
#include <map>
#include <set>

namespace vmcrypt::qcow2 {

namespace {

// Guest bytes handled per batch: each batch costs two to four syncs. Data clusters are written as they
// are planned, so a batch keeps only L2 entry changes in memory. A merge takes about 16 batches of 32
// to 256 MiB, so a large merge pays fewer syncs and a stop request still waits for 256 MiB at most.
constexpr std::uint64_t batch_bytes = 32ull << 20;
constexpr std::uint64_t max_batch_bytes = 256ull << 20;
constexpr std::uint64_t batches_per_merge = 16;

// New data clusters are allocated this many bytes at a time (one refcount sync each), or fewer near the
// end of the pieces. What is left at the end is freed again.
constexpr std::uint64_t reserve_bytes = 128ull << 20;

// Writeback of written data starts after this many bytes, so the batch's sync finds most of it written.
constexpr std::uint64_t writeback_bytes = 32ull << 20;

// How far ahead of the cluster being planned the overlays' data is read into the page cache.
constexpr std::uint64_t prefetch_bytes = 64ull << 20;
constexpr std::uint64_t bitmap_all_allocated = 0x00000000ffffffffull;
constexpr std::uint64_t bitmap_all_zero = 0xffffffff00000000ull;

struct L2Entry {
    std::uint64_t entry = 0;
    std::uint64_t bitmap = 0;  // extended L2 only
    bool operator==(const L2Entry&) const = default;
};

// A byte range of host clusters that loses one reference once the new L2 entry is durable.
struct Release {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

// The L2 entry change of one cluster; its data, if any, is written already.
struct PendingCluster {
    std::uint64_t guest_cluster = 0;
    L2Entry old_entry;
    L2Entry new_entry;
    std::vector<Release> releases;
};

struct L2Table {
    std::uint64_t offset = 0;
    std::vector<std::uint8_t> bytes;
    std::set<std::uint64_t> dirty_sectors;
    bool is_new = false;
};

class Qcow2Merger {
public:
    Qcow2Merger(File& file, const Header& header, Refcounts& refcounts, const std::string& where, PieceReader& reader)
        : file_(file), header_(header), refcounts_(refcounts), where_(where), reader_(reader)
    {
        std::vector<std::uint8_t> bytes(std::uint64_t{header.l1_size} * 8);
        if (!bytes.empty() && !file.read_exact(header.l1_table_offset, bytes))
            throw InvalidInput(where + ": L1 table is past the end of the file");
        for (std::uint64_t i = 0; i < header.l1_size; ++i)
            l1_.push_back(load_be64(bytes, i * 8));
    }

    void run(const std::vector<GuestPiece>& pieces, const MergeProgress& progress)
    {
        const std::uint64_t cluster_size = header_.cluster_size();
        std::uint64_t done = 0;
        std::uint64_t batch_done = 0;
        std::size_t first = 0;  // first piece that ends after the current cluster's start
        std::size_t prefetched = 0;  // first piece not prefetched yet
        std::uint64_t covered_bytes = 0;
        for (const GuestPiece& piece : pieces)
            covered_bytes += piece.length;
        const std::uint64_t merge_batch_bytes = std::clamp(covered_bytes / batches_per_merge, batch_bytes, max_batch_bytes);
        std::uint64_t cluster = pieces.empty() ? 0 : pieces.front().guest_offset / cluster_size;
        while (first < pieces.size()) {
            const std::uint64_t begin = cluster * cluster_size;
            const std::uint64_t end = std::min(begin + cluster_size, header_.size);
            for (; prefetched < pieces.size() && pieces[prefetched].guest_offset < begin + prefetch_bytes; ++prefetched)
                reader_.prefetch(pieces[prefetched]);
            clusters_left_ = (pieces.back().guest_offset + pieces.back().length - begin + cluster_size - 1) / cluster_size;

            std::vector<const GuestPiece*> in_cluster;
            for (std::size_t k = first; k < pieces.size() && pieces[k].guest_offset < end; ++k)
                in_cluster.push_back(&pieces[k]);
            done += plan_cluster(cluster, begin, end, in_cluster);
            batch_done += cluster_size;
            if (batch_done >= merge_batch_bytes) {
                flush_batch();
                batch_done = 0;
                if (progress)
                    progress(done);
            }

            while (first < pieces.size() && pieces[first].guest_offset + pieces[first].length <= end)
                ++first;
            if (first < pieces.size())
                cluster = std::max(end, pieces[first].guest_offset) / cluster_size;
        }
        flush_batch();
        release_reserve();
        if (progress)
            progress(done);
    }

private:
    L2Table* table_of(std::uint64_t l1_index)
    {
        auto found = tables_.find(l1_index);
        if (found != tables_.end())
            return &found->second;
        const std::uint64_t offset = l1_[l1_index] & l1_offset_mask;
        if (offset == 0)
            return nullptr;
        if (refcounts_.get(offset >> header_.cluster_bits) != 1)
            throw Error(ExitCode::failure, where_ + ": internal error: L2 table " + std::to_string(l1_index) +
                                               " is shared; its refcounts were not made exact");
        L2Table table;
        table.offset = offset;
        table.bytes.resize(header_.cluster_size());
        if (!file_.read_exact(offset, table.bytes))
            throw InvalidInput(where_ + ": L2 table " + std::to_string(l1_index) + " is past the end of the file");
        return &tables_.emplace(l1_index, std::move(table)).first->second;
    }

    L2Entry entry_of(std::uint64_t guest_cluster)
    {
        const std::uint64_t l1_index = guest_cluster / header_.l2_entries();
        const std::uint64_t index = guest_cluster % header_.l2_entries();
        L2Entry result;
        if (const L2Table* table = table_of(l1_index)) {
            result.entry = load_be64(table->bytes, index * header_.l2_entry_size());
            if (header_.extended_l2())
                result.bitmap = load_be64(table->bytes, index * header_.l2_entry_size() + 8);
        }
        return result;
    }

    // Reads what the base stores for a cluster (it has no backing file, so unallocated reads as zeros).
    void read_current(const L2Entry& current, std::uint64_t guest_cluster, std::vector<std::uint8_t>& buffer)
    {
        const std::uint64_t cluster_size = header_.cluster_size();
        std::fill(buffer.begin(), buffer.end(), 0);
        if (current.entry & flag_compressed) {
            CompressedCluster cluster = decode_compressed_entry(current.entry, header_.cluster_bits);
            std::vector<std::uint8_t> stored(static_cast<std::size_t>(cluster.stored_bytes));
            stored.resize(file_.read_at(cluster.host_offset, stored));
            buffer = decompress_cluster(stored, header_.compression_type, cluster_size,
                                        where_ + ": compressed guest cluster " + std::to_string(guest_cluster));
            return;
        }
        const std::uint64_t host = current.entry & l2_offset_mask;
        if (host == 0)
            return;
        if (!header_.extended_l2()) {
            if (!(current.entry & flag_zero))
                file_.read_at(host, buffer);
            return;
        }
        const std::uint64_t sub = cluster_size / subclusters_per_cluster;
        for (unsigned s = 0; s < subclusters_per_cluster; ++s)
            if (current.bitmap & (1ull << s))
                file_.read_at(host + s * sub, {buffer.data() + s * sub, static_cast<std::size_t>(sub)});
    }

    // Plans the new state of one base cluster from the pieces that overlap it. Returns the guest bytes
    // the pieces cover in it.
    std::uint64_t plan_cluster(std::uint64_t guest_cluster, std::uint64_t begin, std::uint64_t end,
                               const std::vector<const GuestPiece*>& in_cluster)
    {
        const std::uint64_t cluster_size = header_.cluster_size();
        std::uint64_t covered = 0;
        bool only_zeros = true;
        for (const GuestPiece* piece : in_cluster) {
            const std::uint64_t piece_begin = std::max(begin, piece->guest_offset);
            const std::uint64_t piece_end = std::min(end, piece->guest_offset + piece->length);
            if (piece_begin >= piece_end)
                continue;
            covered += piece_end - piece_begin;
            only_zeros = only_zeros && piece->kind == PieceKind::zero;
        }
        if (covered == 0)
            return 0;

        const L2Entry current = entry_of(guest_cluster);
        const bool compressed = (current.entry & flag_compressed) != 0;
        const std::uint64_t host = compressed ? 0 : current.entry & l2_offset_mask;
        const bool extended = header_.extended_l2();
        PendingCluster pending;
        pending.guest_cluster = guest_cluster;
        pending.old_entry = current;

        if (only_zeros && covered == end - begin) {
            L2Entry next = current;
            if (compressed) {
                CompressedCluster cluster = decode_compressed_entry(current.entry, header_.cluster_bits);
                pending.releases.push_back({cluster.host_offset, cluster.stored_bytes});
                next = {header_.version >= 3 && !extended ? flag_zero : 0, extended ? bitmap_all_zero : 0};
            } else if (host != 0) {
                if (header_.version < 3) {
                    // Version 2 has no zero clusters; without a backing file an unallocated one reads zeros.
                    next = {};
                    pending.releases.push_back({host, cluster_size});
                } else if (extended) {
                    next.bitmap = bitmap_all_zero;
                } else {
                    next.entry = (current.entry & (l2_offset_mask | flag_copied)) | flag_zero;
                }
            }
            // An unallocated cluster or subcluster already reads as zeros: the base has no backing file.
            if (next == current)
                return covered;
            pending.new_entry = next;
            batch_.push_back(std::move(pending));
            return covered;
        }

        data_.assign(cluster_size, 0);
        if (covered != end - begin)
            read_current(current, guest_cluster, data_);
        for (const GuestPiece* piece : in_cluster) {
            const std::uint64_t piece_begin = std::max(begin, piece->guest_offset);
            const std::uint64_t piece_end = std::min(end, piece->guest_offset + piece->length);
            if (piece_begin < piece_end)
                reader_.read(*piece, piece_begin,
                             {data_.data() + (piece_begin - begin), static_cast<std::size_t>(piece_end - piece_begin)});
        }

        // The data is written now: no entry points at a new cluster before the batch's L2 writes, and an
        // in-place cluster is one that only the base reads at a range some overlay covers.
        const bool in_place = host != 0 && refcounts_.get(host >> header_.cluster_bits) == 1;
        const std::uint64_t target = in_place ? host : take_reserved_cluster();
        write_data(target);
        pending.new_entry = {target | flag_copied, extended ? bitmap_all_allocated : 0};
        if (!in_place) {
            if (compressed) {
                CompressedCluster cluster = decode_compressed_entry(current.entry, header_.cluster_bits);
                pending.releases.push_back({cluster.host_offset, cluster.stored_bytes});
            } else if (host != 0) {
                pending.releases.push_back({host, cluster_size});  // shared: this image's reference moves away
            }
        }
        batch_.push_back(std::move(pending));
        return covered;
    }

    void flush_batch()
    {
        if (batch_.empty())
            return;
        const std::uint64_t cluster_size = header_.cluster_size();
        const std::uint64_t entries = header_.l2_entries();

        // New L2 tables for entries in L1 ranges without one.
        std::vector<std::uint64_t> new_tables;
        for (const PendingCluster& pending : batch_) {
            const std::uint64_t l1_index = pending.guest_cluster / entries;
            if ((l1_[l1_index] & l1_offset_mask) == 0 &&
                std::find(new_tables.begin(), new_tables.end(), l1_index) == new_tables.end())
                new_tables.push_back(l1_index);
        }
        if (!new_tables.empty()) {
            std::uint64_t next = refcounts_.allocate(file_, new_tables.size());
            for (std::uint64_t l1_index : new_tables) {
                L2Table table;
                table.offset = next;
                table.bytes.assign(cluster_size, 0);
                table.is_new = true;
                tables_[l1_index] = std::move(table);
                next += cluster_size;
            }
        }

        // The batch's data, written while it was planned, becomes durable before any entry points at it.
        file_.sync_data();
        fault_point("qcow2-merge-data-written");

        // Then the L2 entries. Each entry (with its bitmap) lies inside one 512-byte sector, so each
        // sector write leaves it old or new.
        const std::uint64_t entry_size = header_.l2_entry_size();
        for (const PendingCluster& pending : batch_) {
            if (pending.new_entry == pending.old_entry)
                continue;
            const std::uint64_t l1_index = pending.guest_cluster / entries;
            const std::uint64_t index = pending.guest_cluster % entries;
            L2Table* table = table_of(l1_index);
            store_be64(table->bytes, index * entry_size, pending.new_entry.entry);
            if (header_.extended_l2())
                store_be64(table->bytes, index * entry_size + 8, pending.new_entry.bitmap);
            table->dirty_sectors.insert(index * entry_size / 512);
        }
        for (auto& [l1_index, table] : tables_) {
            if (table.is_new) {
                file_.write_exact(table.offset, table.bytes);
                continue;
            }
            for (std::uint64_t sector : table.dirty_sectors)
                file_.write_exact(table.offset + sector * 512, {table.bytes.data() + sector * 512, 512});
        }
        file_.sync_data();
        fault_point("qcow2-merge-l2-written");

        if (!new_tables.empty()) {
            for (std::uint64_t l1_index : new_tables) {
                l1_[l1_index] = tables_[l1_index].offset | flag_copied;
                std::uint8_t entry[8];
                store_be64(entry, 0, l1_[l1_index]);
                file_.write_exact(header_.l1_table_offset + l1_index * 8, entry);
            }
            file_.sync_data();
        }
        // COMMIT POINT (per batch): the base reads the new data. Replaced clusters are leaked until the
        // refcounts below drop; a re-run's make_refcounts_exact() frees them too.
        fault_point("qcow2-merge-entries-linked");

        bool released = false;
        for (const PendingCluster& pending : batch_) {
            for (const Release& release : pending.releases) {
                const std::uint64_t first = (release.offset & ~std::uint64_t{511}) >> header_.cluster_bits;
                const std::uint64_t last = (release.offset + release.length - 1) >> header_.cluster_bits;
                for (std::uint64_t cluster = first; cluster <= last; ++cluster) {
                    if (const std::uint64_t refcount = refcounts_.get(cluster); refcount > 0) {
                        refcounts_.set(cluster, refcount - 1);
                        released = true;
                    }
                }
            }
        }
        if (released) {
            refcounts_.flush(file_);
            fault_point("qcow2-merge-released");
        }
        batch_.clear();
        tables_.clear();
    }

    // Returns a new cluster for data, from clusters allocated reserve_bytes at a time. The refcounts
    // are durable before the data is written, so a crash leaks the reserve at worst.
    std::uint64_t take_reserved_cluster()
    {
        const std::uint64_t cluster_size = header_.cluster_size();
        if (reserve_left_ == 0) {
            reserve_left_ = std::clamp<std::uint64_t>(clusters_left_, 1, std::max<std::uint64_t>(1, reserve_bytes / cluster_size));
            reserve_next_ = refcounts_.allocate(file_, reserve_left_);
        }
        const std::uint64_t cluster = reserve_next_;
        reserve_next_ += cluster_size;
        --reserve_left_;
        return cluster;
    }

    // Frees the reserved clusters that no entry uses, so the merged base has no leaks.
    void release_reserve()
    {
        if (reserve_left_ == 0)
            return;
        for (std::uint64_t offset = reserve_next_; reserve_left_ > 0; offset += header_.cluster_size(), --reserve_left_)
            refcounts_.set(offset >> header_.cluster_bits, 0);
        refcounts_.flush(file_);
    }

    // Writes the cluster in data_ at `host` and starts writeback every writeback_bytes.
    void write_data(std::uint64_t host)
    {
        file_.write_exact(host, data_);
        unstarted_writeback_ += data_.size();
        if (unstarted_writeback_ >= writeback_bytes) {
            file_.start_writeback(0, 0);
            unstarted_writeback_ = 0;
        }
    }

    File& file_;
    const Header& header_;
    Refcounts& refcounts_;
    std::string where_;
    PieceReader& reader_;
    std::vector<std::uint64_t> l1_;
    std::map<std::uint64_t, L2Table> tables_;  // L2 tables the current batch reads or changes
    std::vector<PendingCluster> batch_;
    std::vector<std::uint8_t> data_;  // the cluster being planned
    std::uint64_t reserve_next_ = 0;
    std::uint64_t reserve_left_ = 0;
    std::uint64_t unstarted_writeback_ = 0;
    std::uint64_t clusters_left_ = 0;  // guest clusters from the one being planned to the last piece's end
};

}  // namespace

void merge_into_qcow2(File& file, const Header& header, Refcounts& refcounts, const std::string& where,
                      const std::vector<GuestPiece>& pieces, PieceReader& reader, const MergeProgress& progress)
{
    Qcow2Merger merger(file, header, refcounts, where, reader);
    merger.run(pieces, progress);
}

void merge_into_raw(File& file, const std::vector<GuestPiece>& pieces, PieceReader& reader,
                    const MergeProgress& progress)
{
    constexpr std::uint64_t chunk = 4ull << 20;
    std::vector<std::uint8_t> buffer;
    std::uint64_t done = 0;
    std::uint64_t since_progress = 0;
    for (const GuestPiece& piece : pieces) {
        if (piece.kind == PieceKind::zero) {
            if (::fallocate(file.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(piece.guest_offset),
                            static_cast<off_t>(piece.length)) != 0) {
                // The file system cannot punch holes: write the zeros.
                buffer.assign(static_cast<std::size_t>(std::min(chunk, piece.length)), 0);
                for (std::uint64_t offset = 0; offset < piece.length; offset += chunk) {
                    const std::uint64_t length = std::min(chunk, piece.length - offset);
                    file.write_exact(piece.guest_offset + offset, {buffer.data(), static_cast<std::size_t>(length)});
                }
            }
        } else {
            for (std::uint64_t offset = 0; offset < piece.length; offset += chunk) {
                const std::uint64_t length = std::min(chunk, piece.length - offset);
                buffer.resize(static_cast<std::size_t>(length));
                reader.read(piece, piece.guest_offset + offset, buffer);
                file.write_exact(piece.guest_offset + offset, buffer);
            }
        }
        done += piece.length;
        since_progress += piece.length;
        fault_point("raw-merge-piece-written");
        if (since_progress >= batch_bytes) {
            since_progress = 0;
            if (progress)
                progress(done);
        }
    }
    file.sync_data();
    if (progress)
        progress(done);
}

}  // namespace vmcrypt::qcow2
