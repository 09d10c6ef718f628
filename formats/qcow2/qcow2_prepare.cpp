// The structural part of a qcow2 encrypt, done before the rewrite engine's journal exists:
//   1. repair leaked clusters (a crash in an earlier run of these steps leaves only leaks);
//   2. decompress every compressed cluster into a newly allocated cluster, because QEMU cannot read
//      a compressed cluster of an encrypted image;
//   3. allocate and write the LUKS header area.
// Each step writes in QEMU's order (refcounts, then data, then the L2 entry, then the old refcounts
// drop), so a crash at any point leaves a valid plaintext image with the same guest data, and at worst
// leaked clusters that the next run repairs. The header does not name the LUKS area until the
// engine's journaled start write.

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/io/free_space.hpp"
#include "core/log.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/compression.hpp"
#include "formats/qcow2/luks_area.hpp"
#include "formats/qcow2/qcow2_disk.hpp"

#include <algorithm>

namespace vmcrypt::qcow2 {

namespace {

// Compressed clusters handled per batch: one allocation, one sync for the data, one for the L2
// entries and one for the released refcounts.
constexpr std::size_t decompress_batch = 256;

RecordFields final_record_estimate(RecordFields fields)
{
    bool has_check = false;
    for (auto& [name, value] : fields) {
        if (name == "state")
            value = "encrypted";
        has_check = has_check || name == "dataCheck";
    }
    if (!has_check)
        fields.insert(fields.end() - 1, {"dataCheck", std::string(44, 'A')});
    return fields;
}

}  // namespace

void QcowDisk::prepare_encrypt(const SecureBytes& dek, const RecordFields& record)
{
    if (file_->access() != Access::read_write || !refcounts_)
        throw Error(ExitCode::failure, name_ + ": prepare_encrypt: the image is open read-only");
    if (static_cast<CryptMethod>(header_.crypt_method) != CryptMethod::none)
        throw WrongDiskState(name_ + ": the image is already encrypted (crypt_method " +
                             std::to_string(header_.crypt_method) + "); nothing was written");

    // Nothing is written before these checks: the final header must fit in cluster 0, and the LUKS
    // area must build.
    prepared_area_ = CryptoHeaderPointer{header_.cluster_size(), luks_area_size()};
    record_update(final_record_estimate(record));
    prepared_area_.reset();
    std::vector<std::uint8_t> area = build_qemu_luks_area(dek);

    repair_leaks();
    decompress_clusters();
    CryptoHeaderPointer pointer = write_luks_area(area);
    load(false);
    prepared_area_ = pointer;
}

// The structural part of a qcow2 deep rekey, before the journal exists: the LUKS area for the new DEK
// is allocated (refcounts first), written and synced, and no header field names it yet. A crash here
// leaves the image as it was with leaked clusters, which the next run repairs. The old area stays
// until the rekey's final header write, because the data not yet rewritten is still under the old DEK.
void QcowDisk::prepare_rekey(const SecureBytes& new_dek, const RecordFields& record)
{
    if (file_->access() != Access::read_write || !refcounts_)
        throw Error(ExitCode::failure, name_ + ": prepare_rekey: the image is open read-only");
    if (static_cast<CryptMethod>(header_.crypt_method) != CryptMethod::luks || !record_ || !header_.crypto_header())
        throw WrongDiskState(name_ + ": a deep rekey needs an image that vmcrypt encrypted (crypt_method 2 with a "
                                     "vmcrypt record); nothing was written");
    if (next_area_)
        throw Error(ExitCode::failure, name_ + ": prepare_rekey: a new LUKS area is prepared already");

    // Nothing is written before these checks: the rekeying and the final header must fit in cluster 0,
    // and the new LUKS area must build.
    next_area_ = CryptoHeaderPointer{header_.cluster_size(), luks_area_size()};
    try {
        record_update(record);
        record_update(final_record_estimate(record));
    } catch (...) {
        next_area_.reset();
        throw;
    }
    next_area_.reset();
    std::vector<std::uint8_t> area = build_qemu_luks_area(new_dek);

    repair_leaks();
    CryptoHeaderPointer pointer = write_luks_area(area);
    load(false);
    next_area_ = pointer;
}

std::uint64_t QcowDisk::prepare_encrypt_bytes() const
{
    const std::uint64_t cluster_size = header_.cluster_size();
    const std::uint64_t compressed = map_.compressed.size();
    const std::uint64_t area_clusters = (luks_area_size() + cluster_size - 1) / cluster_size;
    if (std::optional<std::uint64_t> growth = planned_growth(area_clusters, true))
        return *growth;
    const std::uint64_t batches = (compressed + decompress_batch - 1) / decompress_batch;
    return allocation_bound(compressed + area_clusters, batches + 1);
}

std::uint64_t QcowDisk::prepare_rekey_bytes() const
{
    const std::uint64_t cluster_size = header_.cluster_size();
    const std::uint64_t area_clusters = (luks_area_size() + cluster_size - 1) / cluster_size;
    if (std::optional<std::uint64_t> growth = planned_growth(area_clusters, false))
        return *growth;
    return allocation_bound(area_clusters, 1);
}

// Runs the allocations of prepare_encrypt() or prepare_rekey() on a copy of the refcounts: the leak
// repair, the decompression batches with their releases (encrypt only), then the LUKS area. Adds up the
// clusters that land in holes of the file or past its end.
std::optional<std::uint64_t> QcowDisk::planned_growth(std::uint64_t area_clusters, bool decompress) const
{
    // A copy of the refcounts of a multi-terabyte image would double a large allocation; its growth is
    // bounded instead.
    constexpr std::uint64_t max_copied_block_bytes = 256ull << 20;
    if (!refcounts_)
        return 0;
    if (refcounts_->block_bytes() > max_copied_block_bytes)
        return std::nullopt;
    Refcounts plan = *refcounts_;
    for (const auto& [cluster, refcount] : leak_repairs_)
        plan.set(cluster, refcount);

    const std::uint64_t cluster_size = header_.cluster_size();
    std::uint64_t growth = 0;
    auto allocate = [&](std::uint64_t count) {
        const auto run = plan.allocate_in_memory(count);
        if (run)
            growth += unallocated_bytes(*file_, run->first * cluster_size, (run->second - run->first) * cluster_size);
        return run.has_value();
    };

    const std::vector<CompressedCluster>& compressed = map_.compressed;
    for (std::size_t first = 0; decompress && first < compressed.size(); first += decompress_batch) {
        const std::size_t count = std::min(decompress_batch, compressed.size() - first);
        if (!allocate(count))
            return std::nullopt;
        for (std::size_t i = first; i < first + count; ++i) {
            const std::uint64_t begin = compressed[i].host_offset & ~std::uint64_t{511};
            const std::uint64_t end = begin + compressed[i].stored_bytes + (compressed[i].host_offset & 511);
            for (std::uint64_t host = begin >> header_.cluster_bits; host <= (end - 1) >> header_.cluster_bits; ++host)
                if (plan.get(host) > 0)
                    plan.set(host, plan.get(host) - 1);
        }
    }
    if (!allocate(area_clusters))
        return std::nullopt;
    return growth;
}

// Counts every cluster as new at the end of the file, although allocate() may reuse free clusters
// inside it. Each call may start a refcount block at a block boundary.
// NOTE: the bound assumes that the refcount table grows at most once, to 1.5 times its size or to
// what the new end needs, with the blocks that cover it. An image whose table grows twice in one run
// can need a few clusters more, and the ENOSPC message then says how to continue.
std::uint64_t QcowDisk::allocation_bound(std::uint64_t clusters, std::uint64_t allocations) const
{
    if (!refcounts_ || clusters == 0)
        return 0;
    const std::uint64_t cluster_size = header_.cluster_size();
    const std::uint64_t per_block = refcounts_->entries_per_block();
    std::uint64_t total = clusters + clusters / per_block + allocations + 1;

    const std::uint64_t end = refcounts_->end_of_used_clusters() + total;
    if (end > refcounts_->covered_clusters()) {
        const std::uint64_t table_entries = refcounts_->covered_clusters() / per_block;
        const std::uint64_t entries = std::max(end / per_block + 2, table_entries + table_entries / 2 + 1);
        const std::uint64_t table_clusters = (entries * 8 + cluster_size - 1) / cluster_size;
        total += table_clusters + table_clusters / per_block + 2;
    }
    return total * cluster_size;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>>
QcowDisk::find_leak_repairs(const ClusterReferences& references) const
{
    std::vector<std::pair<std::uint64_t, std::uint64_t>> repairs;
    const std::uint64_t end = refcounts_->end_of_used_clusters();
    for (std::uint64_t cluster = 0; cluster < end; ++cluster) {
        const std::uint64_t refcount = refcounts_->get(cluster);
        const std::uint64_t count = references.count(cluster);
        // A cluster without references is leaked; a compressed host cluster may keep a refcount from
        // entries that were decompressed. Others (refcount 2 on data) stay, because lowering them would
        // contradict their COPIED flags; qemu-img check -r all repairs those.
        if (refcount > count && (count == 0 || references.compressed_only(cluster)))
            repairs.emplace_back(cluster, count);
    }
    return repairs;
}

void QcowDisk::repair_leaks()
{
    if (!references_complete()) {
        // NOTE: bitmaps, snapshots or unknown extensions may own clusters that vmcrypt cannot see, so
        // their clusters would look leaked. Real leaks stay until qemu-img check -r leaks.
        log_info(name_ + ": not checking for leaked clusters: the image has bitmaps or unknown extensions");
        return;
    }
    const std::vector<std::pair<std::uint64_t, std::uint64_t>> repairs = find_leak_repairs(count_references());
    for (const auto& [cluster, refcount] : repairs)
        refcounts_->set(cluster, refcount);
    const std::uint64_t repaired = repairs.size();
    if (repaired == 0)
        return;
    refcounts_->flush(*file_);
    fault_point("qcow2-leaks-repaired");
    log_info(name_ + ": repaired the refcounts of " + std::to_string(repaired) + " leaked clusters");
}

void QcowDisk::decompress_clusters()
{
    File& file = *file_;
    const std::vector<CompressedCluster> compressed = map_.compressed;
    const std::uint64_t cluster_size = header_.cluster_size();
    if (compressed.empty())
        return;
    log_info(name_ + ": decompressing " + std::to_string(compressed.size()) + " compressed clusters");

    for (std::size_t first = 0; first < compressed.size(); first += decompress_batch) {
        const std::size_t count = std::min(decompress_batch, compressed.size() - first);
        const std::uint64_t target = refcounts_->allocate(file, count);

        // The data first: the clusters are allocated, and no entry points at them yet.
        for (std::size_t i = 0; i < count; ++i) {
            const CompressedCluster& cluster = compressed[first + i];
            std::vector<std::uint8_t> stored(static_cast<std::size_t>(cluster.stored_bytes));
            stored.resize(file.read_at(cluster.host_offset, stored));
            const std::string what = name_ + ": compressed guest cluster " + std::to_string(cluster.guest_cluster);
            std::vector<std::uint8_t> plain = decompress_cluster(stored, header_.compression_type, cluster_size, what);
            file.write_exact(target + i * cluster_size, plain);
        }
        file.sync_data();
        fault_point("qcow2-decompressed-written");

        // Then the L2 entries. Each entry (with its bitmap) lies inside one sector, so each write is atomic.
        for (std::size_t i = 0; i < count; ++i) {
            std::uint8_t entry[16] = {};
            store_be64(entry, 0, (target + i * cluster_size) | flag_copied);
            store_be64(entry, 8, 0x00000000ffffffffull);  // extended L2: all 32 subclusters allocated
            file.write_exact(compressed[first + i].entry_offset, {entry, static_cast<std::size_t>(header_.l2_entry_size())});
            if (i == 0)
                fault_point("qcow2-decompressed-linking");
        }
        file.sync_data();
        // COMMIT POINT: the guest reads the batch from the new clusters; the compressed bytes are leaked
        // until the refcounts below drop.
        fault_point("qcow2-decompressed-linked");

        for (std::size_t i = 0; i < count; ++i) {
            const CompressedCluster& cluster = compressed[first + i];
            const std::uint64_t begin = cluster.host_offset & ~std::uint64_t{511};
            const std::uint64_t end = begin + cluster.stored_bytes + (cluster.host_offset & 511);
            for (std::uint64_t host = begin >> header_.cluster_bits; host <= (end - 1) >> header_.cluster_bits; ++host)
                if (refcounts_->get(host) > 0)
                    refcounts_->set(host, refcounts_->get(host) - 1);
        }
        refcounts_->flush(file);
        fault_point("qcow2-decompressed-released");
    }
}

CryptoHeaderPointer QcowDisk::write_luks_area(const std::vector<std::uint8_t>& area)
{
    File& file = *file_;
    const std::uint64_t cluster_size = header_.cluster_size();
    const std::uint64_t clusters = (area.size() + cluster_size - 1) / cluster_size;
    const std::uint64_t offset = refcounts_->allocate(file, clusters);
    fault_point("qcow2-luks-area-allocated");

    std::vector<std::uint8_t> padded = area;
    padded.resize(clusters * cluster_size, 0);
    file.write_exact(offset, padded);
    file.sync_data();
    // The area is written but unreferenced (a leak) until the engine's start write names it.
    fault_point("qcow2-luks-area-written");
    log_info(name_ + ": LUKS header area written at " + hex(offset) + " (" + std::to_string(area.size()) + " bytes)");
    return CryptoHeaderPointer{offset, area.size()};
}

}  // namespace vmcrypt::qcow2
