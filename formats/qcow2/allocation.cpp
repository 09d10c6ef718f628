// Cluster allocation: finding free clusters and growing the refcount structures, in QEMU's write order.

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/refcounts.hpp"

namespace vmcrypt::qcow2 {

std::uint64_t Refcounts::find_free_run(std::uint64_t count, std::uint64_t start) const
{
    std::uint64_t run_start = start;
    std::uint64_t run_length = 0;
    for (std::uint64_t cluster = start; run_length < count; ++cluster) {
        if (get(cluster) == 0) {
            ++run_length;
            continue;
        }
        run_start = cluster + 1;
        run_length = 0;
    }
    return run_start;
}

std::uint64_t Refcounts::end_of_used_clusters() const
{
    for (std::uint64_t block_index = table_.size(); block_index-- > 0;) {
        if (!has_block(block_index))
            continue;
        for (std::uint64_t index = entries_per_block_; index-- > 0;) {
            std::uint64_t cluster = block_index * entries_per_block_ + index;
            if (get(cluster) != 0)
                return std::max(file_clusters_, cluster + 1);
        }
    }
    return file_clusters_;
}

std::uint64_t Refcounts::block_bytes() const
{
    std::uint64_t bytes = 0;
    for (const std::vector<std::uint8_t>& block : blocks_)
        bytes += block.size();
    return bytes;
}

Refcounts::AllocationPlan Refcounts::plan_allocation(std::uint64_t count) const
{
    // The run and the refcount blocks it lacks, placed right behind it: [start, start + count + missing).
    // Every cluster of a range without a block has refcount 0, so the search finds the blocks' room too.
    AllocationPlan plan;
    for (;;) {
        plan.start = find_free_run(count + plan.missing.size(), free_hint_);
        std::vector<std::uint64_t> now;
        const std::uint64_t end = plan.start + count + plan.missing.size();
        for (std::uint64_t block_index = plan.start / entries_per_block_; block_index <= (end - 1) / entries_per_block_;
             ++block_index)
            if (!has_block(block_index))
                now.push_back(block_index);
        if (!now.empty() && now.back() >= table_.size()) {
            plan.table_entries_needed = now.back() + 1;
            return plan;
        }
        const bool fits = now.size() <= plan.missing.size();
        plan.missing = now;
        if (fits)
            return plan;  // the run found has room for every block it lacks
    }
}

std::uint64_t Refcounts::reserve(const AllocationPlan& plan, std::uint64_t count)
{
    const std::uint64_t cluster_size = std::uint64_t{1} << cluster_bits_;
    for (std::size_t k = 0; k < plan.missing.size(); ++k) {
        table_[plan.missing[k]] = (plan.start + count + k) << cluster_bits_;
        blocks_[plan.missing[k]].assign(cluster_size, 0);
    }
    const std::uint64_t end = plan.start + count + plan.missing.size();
    for (std::uint64_t cluster = plan.start; cluster < end; ++cluster)
        set(cluster, 1);
    if (plan.start == free_hint_)
        free_hint_ = end;
    file_clusters_ = std::max(file_clusters_, end);
    return end;
}

std::optional<std::pair<std::uint64_t, std::uint64_t>> Refcounts::allocate_in_memory(std::uint64_t count)
{
    const AllocationPlan plan = plan_allocation(count);
    if (plan.table_entries_needed != 0)
        return std::nullopt;
    return std::pair{plan.start, reserve(plan, count)};
}

std::uint64_t Refcounts::allocate(File& file, std::uint64_t count)
{
    if (count == 0)
        throw Error(ExitCode::failure, where_ + ": internal error: allocation of 0 clusters");

    AllocationPlan plan = plan_allocation(count);
    while (plan.table_entries_needed != 0) {
        grow_table(file, plan.table_entries_needed);
        plan = plan_allocation(count);
    }
    reserve(plan, count);

    for (std::uint64_t block_index : plan.missing) {
        file.write_exact(table_[block_index], blocks_[block_index]);
        dirty_sectors_.erase(block_index);
    }
    flush(file);  // raised refcounts in existing blocks, and a sync for the new blocks
    if (!plan.missing.empty()) {
        fault_point("qcow2-refblock-written");
        for (std::uint64_t block_index : plan.missing) {
            std::uint8_t entry[8];
            store_be64(entry, 0, table_[block_index]);
            file.write_exact(table_offset_ + block_index * 8, entry);
        }
        file.sync_data();
        fault_point("qcow2-reftable-entry-written");
    }
    // COMMIT POINT: the clusters are durably in use. A crash before the caller links them leaks them.
    fault_point("qcow2-clusters-allocated");
    return plan.start << cluster_bits_;
}

// Moves the refcount table to a larger one after every used cluster, with the new blocks that the
// new table and the blocks themselves need right behind it (as QEMU's alloc_refcount_block does).
// The old table stays valid until the header points at the new one; then its clusters are released.
void Refcounts::grow_table(File& file, std::uint64_t needed_entries)
{
    const std::uint64_t cluster_size = std::uint64_t{1} << cluster_bits_;
    const std::uint64_t per_block = entries_per_block_;
    const std::uint64_t start = end_of_used_clusters();

    std::uint64_t entries = std::max(needed_entries, table_.size() + table_.size() / 2 + 1);
    std::uint64_t table_clusters = 0;
    std::vector<std::uint64_t> missing;
    for (;;) {
        table_clusters = (entries * 8 + cluster_size - 1) / cluster_size;
        missing.clear();
        for (;;) {
            const std::uint64_t end = start + table_clusters + missing.size();
            std::vector<std::uint64_t> now;
            for (std::uint64_t block_index = start / per_block; block_index <= (end - 1) / per_block; ++block_index)
                if (!has_block(block_index))
                    now.push_back(block_index);
            if (now.size() == missing.size())
                break;
            missing = now;
        }
        const std::uint64_t last_block = (start + table_clusters + missing.size() - 1) / per_block;
        if (last_block < entries)
            break;
        entries = last_block + 1;
    }
    if (table_clusters * cluster_size > max_refcount_table_bytes)
        throw UnsupportedInput(where_ + ": the refcount table would need " + std::to_string(table_clusters) +
                               " clusters, more than QEMU's limit of 8 MiB");

    const std::uint64_t old_offset = table_offset_;
    const std::uint64_t old_clusters = table_clusters_;
    const std::uint64_t new_offset = start << cluster_bits_;
    table_.resize(table_clusters * cluster_size / 8, 0);
    blocks_.resize(table_.size());
    for (std::size_t k = 0; k < missing.size(); ++k) {
        table_[missing[k]] = (start + table_clusters + k) << cluster_bits_;
        blocks_[missing[k]].assign(cluster_size, 0);
    }
    for (std::uint64_t cluster = start; cluster < start + table_clusters + missing.size(); ++cluster)
        set(cluster, 1);

    for (std::uint64_t block_index : missing) {
        file.write_exact(table_[block_index], blocks_[block_index]);
        dirty_sectors_.erase(block_index);
    }
    flush(file);  // the raised refcounts in existing blocks, and a sync for the new blocks
    fault_point("qcow2-reftable-blocks-written");

    std::vector<std::uint8_t> table_bytes(table_clusters * cluster_size, 0);
    for (std::size_t i = 0; i < table_.size(); ++i)
        store_be64(table_bytes, i * 8, table_[i]);
    file.write_exact(new_offset, table_bytes);
    file.sync_data();
    fault_point("qcow2-reftable-written");

    // refcount_table_offset (8 bytes at 48) and refcount_table_clusters (4 bytes at 56) share sector 0,
    // so one write switches both atomically.
    std::uint8_t fields[12];
    store_be64(fields, 0, new_offset);
    store_be32(fields, 8, static_cast<std::uint32_t>(table_clusters));
    file.write_exact(48, fields);
    file.sync_data();
    // COMMIT POINT: the new table is in use; the old one is only leaked until released below.
    fault_point("qcow2-reftable-switched");
    table_offset_ = new_offset;
    table_clusters_ = table_clusters;
    file_clusters_ = std::max(file_clusters_, start + table_clusters + missing.size());

    const std::uint64_t old_first = old_offset >> cluster_bits_;
    for (std::uint64_t cluster = old_first; cluster < old_first + old_clusters; ++cluster)
        if (get(cluster) > 0)
            set(cluster, get(cluster) - 1);
    flush(file);
    if (old_first < free_hint_)
        free_hint_ = old_first;
}

}  // namespace vmcrypt::qcow2
