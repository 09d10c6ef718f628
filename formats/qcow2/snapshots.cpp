#include "formats/qcow2/snapshots.hpp"

#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

namespace vmcrypt::qcow2 {

namespace {

constexpr std::size_t fixed_entry_size = 40;
constexpr std::uint64_t max_table_bytes = 64ull << 20;  // QCOW_MAX_SNAPSHOTS_SIZE in QEMU 7.2

std::string printable(const std::vector<std::uint8_t>& bytes, std::size_t offset, std::size_t length)
{
    std::string text;
    for (std::size_t i = 0; i < length; ++i) {
        char c = static_cast<char>(bytes[offset + i]);
        text += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    return text;
}

}  // namespace

std::vector<Snapshot> read_snapshots(const File& file, const Header& header, const std::string& where)
{
    std::vector<Snapshot> snapshots;
    if (header.nb_snapshots == 0)
        return snapshots;

    const std::uint64_t file_size = file.size();
    std::uint64_t offset = header.snapshots_offset;
    for (std::uint32_t i = 0; i < header.nb_snapshots; ++i) {
        const std::string entry_name = "snapshot table entry " + std::to_string(i);
        if (offset - header.snapshots_offset > max_table_bytes)
            throw InvalidInput(where + ": snapshot table is larger than QEMU's limit of 64 MiB");
        std::vector<std::uint8_t> fixed(fixed_entry_size);
        if (!file.read_exact(offset, fixed))
            throw InvalidInput(where + ": " + entry_name + " at " + hex(offset) + " is past the end of the file");
        Snapshot snapshot;
        snapshot.l1_table_offset = load_be64(fixed, 0);
        snapshot.l1_size = load_be32(fixed, 8);
        const std::uint32_t id_length = static_cast<std::uint32_t>(load_be(fixed, 12, 2));
        const std::uint32_t name_length = static_cast<std::uint32_t>(load_be(fixed, 14, 2));
        snapshot.date_seconds = load_be32(fixed, 16);
        snapshot.vm_state_size = load_be32(fixed, 32);
        const std::uint32_t extra_size = load_be32(fixed, 36);
        if (extra_size > max_snapshot_extra_data)
            throw InvalidInput(where + ": " + entry_name + ": extra_data_size " + std::to_string(extra_size) +
                               " is larger than QEMU's limit of 1024 bytes; run qemu-img check -r all on the image");
        if (snapshot.l1_table_offset % header.cluster_size() != 0 ||
            std::uint64_t{snapshot.l1_size} * 8 > max_l1_bytes)
            throw InvalidInput(where + ": " + entry_name + ": L1 table at " + hex(snapshot.l1_table_offset) + " with " +
                               std::to_string(snapshot.l1_size) + " entries is unaligned or too large");

        std::vector<std::uint8_t> rest(extra_size + id_length + name_length);
        if (!file.read_exact(offset + fixed_entry_size, rest))
            throw InvalidInput(where + ": " + entry_name + " runs past the end of the file (" +
                               std::to_string(file_size) + " bytes)");
        if (extra_size >= 8)
            snapshot.vm_state_size = load_be64(rest, 0);
        if (extra_size >= 16)
            snapshot.disk_size = load_be64(rest, 8);
        snapshot.id = printable(rest, extra_size, id_length);
        snapshot.name = printable(rest, extra_size + id_length, name_length);
        snapshots.push_back(std::move(snapshot));

        const std::uint64_t length = fixed_entry_size + rest.size();
        offset += (length + 7) & ~std::uint64_t{7};
    }
    return snapshots;
}

}  // namespace vmcrypt::qcow2
