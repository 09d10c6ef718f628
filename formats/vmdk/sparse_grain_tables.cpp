#include "formats/vmdk/sparse_grain_tables.hpp"

#include "core/error.hpp"
#include "formats/vmdk/grain_directory.hpp"

namespace vmcrypt::vmdk {

namespace {

std::vector<std::uint32_t> read_directory(const File& file, std::uint64_t sector, std::uint64_t entries,
                                          const std::string& file_name)
{
    std::uint64_t length = entries * 4;
    std::vector<std::uint8_t> bytes;
    if (sector * 512 <= file.size() && length <= file.size() - sector * 512)
        bytes.resize(static_cast<std::size_t>(length));  // only then: a damaged header cannot force a huge allocation
    if (bytes.size() != length || !file.read_exact(sector * 512, bytes))
        throw InvalidInput(file_name + ": grain directory at sector " + std::to_string(sector) +
                           " lies past the end of the file; the file is truncated, so copy it again");
    std::vector<std::uint32_t> directory(static_cast<std::size_t>(entries));
    for (std::size_t i = 0; i < directory.size(); ++i)
        directory[i] = static_cast<std::uint32_t>(bytes[i * 4]) | static_cast<std::uint32_t>(bytes[i * 4 + 1]) << 8 |
                       static_cast<std::uint32_t>(bytes[i * 4 + 2]) << 16 |
                       static_cast<std::uint32_t>(bytes[i * 4 + 3]) << 24;
    return directory;
}

}  // namespace

SparseHeader read_valid_sparse_header(const File& file, const std::string& file_name)
{
    std::vector<std::uint8_t> bytes(sparse_header_size);
    bytes.resize(file.read_at(0, bytes));
    return parse_sparse_header(bytes, file.size(), file_name);
}

SparseGrainTables::SparseGrainTables(File& file, const SparseHeader& header, std::string file_name)
    : file_(file), header_(header), file_name_(std::move(file_name))
{
    grain_count_ = header.capacity / header.grain_size + (header.capacity % header.grain_size != 0 ? 1 : 0);
    directory_ = read_directory(file_, header.gd_offset, header.grain_directory_entries(), file_name_);
    if (header.has_redundant_grain_directory())
        redundant_directory_ = read_directory(file_, header.rgd_offset, header.grain_directory_entries(), file_name_);
}

bool SparseGrainTables::has_table(std::uint64_t grain) const
{
    return directory_.at(static_cast<std::size_t>(grain / grain_table_entry_count)) != 0;
}

SparseGrainTables::Table& SparseGrainTables::load(std::uint64_t table_index)
{
    auto found = tables_.find(table_index);
    if (found != tables_.end())
        return found->second;

    std::vector<std::uint8_t> bytes(grain_table_bytes);
    std::uint64_t offset = std::uint64_t{directory_.at(static_cast<std::size_t>(table_index))} * 512;
    if (!file_.read_exact(offset, bytes))
        throw InvalidInput(file_name_ + ": grain table " + std::to_string(table_index) +
                           " lies past the end of the file; the file is truncated, so copy it again");
    Table table;
    table.entries = parse_grain_table(bytes, table_index, header_, file_.size(), file_name_);
    return tables_.emplace(table_index, std::move(table)).first->second;
}

std::uint32_t SparseGrainTables::entry(std::uint64_t grain)
{
    if (!has_table(grain))
        return 0;
    return load(grain / grain_table_entry_count).entries[grain % grain_table_entry_count];
}

void SparseGrainTables::set_entry(std::uint64_t grain, std::uint32_t value)
{
    Table& table = load(grain / grain_table_entry_count);
    table.entries[grain % grain_table_entry_count] = value;
    table.changed = true;
}

void SparseGrainTables::write_changed()
{
    for (auto& [table_index, table] : tables_) {
        if (!table.changed)
            continue;
        std::vector<std::uint8_t> bytes(grain_table_bytes);
        for (std::size_t i = 0; i < table.entries.size(); ++i) {
            std::uint32_t value = table.entries[i];
            for (std::size_t b = 0; b < 4; ++b)
                bytes[i * 4 + b] = static_cast<std::uint8_t>(value >> (8 * b));
        }
        std::size_t index = static_cast<std::size_t>(table_index);
        file_.write_exact(std::uint64_t{directory_[index]} * 512, bytes);
        if (!redundant_directory_.empty())
            file_.write_exact(std::uint64_t{redundant_directory_[index]} * 512, bytes);
    }
    tables_.clear();
}

}  // namespace vmcrypt::vmdk
