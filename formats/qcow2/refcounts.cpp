#include "formats/qcow2/refcounts.hpp"

#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

namespace vmcrypt::qcow2 {

namespace {

constexpr std::uint64_t refcount_table_reserved_mask = 0x1ff;

}  // namespace

Refcounts Refcounts::load(const File& file, const Header& header, const std::string& where)
{
    Refcounts refcounts;
    refcounts.where_ = where;
    refcounts.cluster_bits_ = header.cluster_bits;
    refcounts.refcount_order_ = header.refcount_order;
    refcounts.entries_per_block_ = (header.cluster_size() * 8) >> header.refcount_order;
    refcounts.table_offset_ = header.refcount_table_offset;
    refcounts.table_clusters_ = header.refcount_table_clusters;
    const std::uint64_t cluster_size = header.cluster_size();
    const std::uint64_t file_size = file.size();
    refcounts.file_clusters_ = (file_size + cluster_size - 1) >> header.cluster_bits;

    std::vector<std::uint8_t> table(refcounts.table_clusters_ * cluster_size);
    if (!file.read_exact(refcounts.table_offset_, table))
        throw InvalidInput(where + ": refcount table at " + hex(refcounts.table_offset_) + " is past the end of the file");
    refcounts.table_.resize(table.size() / 8);
    refcounts.blocks_.resize(refcounts.table_.size());
    for (std::size_t i = 0; i < refcounts.table_.size(); ++i) {
        std::uint64_t entry = load_be64(table, i * 8);
        if (entry == 0)
            continue;
        if (entry & refcount_table_reserved_mask)
            throw InvalidInput(where + ": refcount table entry " + std::to_string(i) + " (" + hex(entry) +
                               ") has reserved bits set; run qemu-img check -r all on the image");
        if (entry % cluster_size != 0)
            throw InvalidInput(where + ": refcount table entry " + std::to_string(i) + ": block offset " + hex(entry) +
                               " is not cluster-aligned");
        if (entry > file_size || cluster_size > file_size - entry)
            throw InvalidInput(where + ": refcount table entry " + std::to_string(i) + ": block at " + hex(entry) +
                               " is past the end of the file (" + std::to_string(file_size) + " bytes)");
        refcounts.table_[i] = entry;
        refcounts.blocks_[i].resize(cluster_size);
        if (!file.read_exact(entry, refcounts.blocks_[i]))
            throw InvalidInput(where + ": refcount block " + std::to_string(i) + " at " + hex(entry) +
                               " is past the end of the file");
    }
    return refcounts;
}

std::uint64_t Refcounts::max_value() const
{
    return refcount_order_ == 6 ? ~std::uint64_t{0} : (std::uint64_t{1} << (1u << refcount_order_)) - 1;
}

bool Refcounts::has_block(std::uint64_t block_index) const
{
    return block_index < table_.size() && !blocks_[block_index].empty();
}

std::uint64_t Refcounts::get(std::uint64_t cluster) const
{
    const std::uint64_t block_index = cluster / entries_per_block_;
    if (!has_block(block_index))
        return 0;
    const std::vector<std::uint8_t>& block = blocks_[block_index];
    const std::uint64_t index = cluster % entries_per_block_;
    switch (refcount_order_) {
    case 0:
        return (block[index / 8] >> (index % 8)) & 0x1;
    case 1:
        return (block[index / 4] >> (2 * (index % 4))) & 0x3;
    case 2:
        return (block[index / 2] >> (4 * (index % 2))) & 0xf;
    default: {
        const std::size_t width = std::size_t{1} << (refcount_order_ - 3);
        return load_be(block, index * width, width);
    }
    }
}

void Refcounts::set(std::uint64_t cluster, std::uint64_t value)
{
    const std::uint64_t block_index = cluster / entries_per_block_;
    if (!has_block(block_index))
        throw Error(ExitCode::failure, where_ + ": internal error: cluster " + std::to_string(cluster) +
                                           " has no refcount block");
    if (value > max_value())
        throw UnsupportedInput(where_ + ": a refcount of " + std::to_string(value) + " does not fit in " +
                               std::to_string(1u << refcount_order_) + " bits");
    std::vector<std::uint8_t>& block = blocks_[block_index];
    const std::uint64_t index = cluster % entries_per_block_;
    std::uint64_t byte = 0;
    switch (refcount_order_) {
    case 0:
    case 1:
    case 2: {
        const unsigned bits = 1u << refcount_order_;
        const std::uint64_t per_byte = 8 / bits;
        byte = index / per_byte;
        const unsigned shift = static_cast<unsigned>(bits * (index % per_byte));
        const unsigned mask = ((1u << bits) - 1) << shift;
        block[byte] = static_cast<std::uint8_t>((block[byte] & ~mask) | ((value << shift) & mask));
        break;
    }
    default: {
        const std::size_t width = std::size_t{1} << (refcount_order_ - 3);
        byte = index * width;
        store_be(block, byte, width, value);
        break;
    }
    }
    dirty_sectors_[block_index].insert(byte / 512);
}

void Refcounts::set_range(File& file, std::uint64_t first, std::uint64_t count, std::uint64_t value)
{
    for (std::uint64_t cluster = first; cluster < first + count; ++cluster)
        set(cluster, value);
    if (value == 0 && first < free_hint_)
        free_hint_ = first;
    flush(file);
}

void Refcounts::flush(File& file)
{
    if (dirty_sectors_.empty())
        return;
    // Each sector is written on its own: a 512-byte write is atomic, so a crash leaves every refcount
    // either old or new.
    for (const auto& [block_index, sectors] : dirty_sectors_) {
        const std::vector<std::uint8_t>& block = blocks_[block_index];
        for (std::uint64_t sector : sectors) {
            const std::size_t begin = static_cast<std::size_t>(sector * 512);
            const std::size_t length = std::min<std::size_t>(512, block.size() - begin);
            file.write_exact(table_[block_index] + begin, {block.data() + begin, length});
        }
    }
    dirty_sectors_.clear();
    file.sync_data();
}

void Refcounts::add_references(ClusterReferences& references) const
{
    const std::uint64_t cluster_size = std::uint64_t{1} << cluster_bits_;
    references.add_exclusive(table_offset_, table_clusters_ * cluster_size, "the refcount table");
    for (std::size_t i = 0; i < table_.size(); ++i)
        if (table_[i] != 0)
            references.add_exclusive(table_[i], cluster_size, "refcount block " + std::to_string(i));
}

}  // namespace vmcrypt::qcow2
