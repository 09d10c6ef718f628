#include "formats/vmdk/merge_stream.hpp"

#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "formats/vmdk/consolidate.hpp"
#include "formats/vmdk/sparse_grain_tables.hpp"

#include <sys/stat.h>

namespace vmcrypt::vmdk {

namespace {

bool is_single_file_sparse(ChainMember& member)
{
    VmdkDisk* disk = member.disk();
    return disk && disk->subformat() == "monolithicSparse" && disk->files().size() == 1;
}

}  // namespace

std::uint64_t data_bytes_of(const std::vector<GuestRun>& runs)
{
    std::uint64_t bytes = 0;
    for (const GuestRun& run : runs)
        if (run.kind == GuestRunKind::data)
            bytes += run.length;
    return bytes;
}

std::vector<GuestRun> commit_runs(SnapshotChain& chain)
{
    std::vector<std::vector<GuestRun>> layers;
    for (std::size_t i = 1; i < chain.members.size(); ++i)
        layers.push_back(chain.members[i]->delta_runs());
    return overlay_layers(layers);
}

std::vector<GuestRun> stream_runs(SnapshotChain& chain)
{
    std::vector<std::vector<GuestRun>> layers;
    for (std::size_t i = 0; i + 1 < chain.members.size(); ++i)
        layers.push_back(chain.members[i]->delta_runs());  // for the base: its allocated and zeroed grains
    std::vector<GuestRun> below = overlay_layers(layers);
    return remove_covered(below, chain.members.back()->delta_runs());
}

std::optional<std::vector<std::uint8_t>> stream_descriptor_area(SnapshotChain& chain, const std::string& new_cid,
                                                                std::string& reason)
{
    ChainMember& base = *chain.members.front();
    ChainMember& top = *chain.members.back();
    if (!is_single_file_sparse(base) || !is_single_file_sparse(top)) {
        reason = "the base and the top are not both monolithicSparse";
        return std::nullopt;
    }
    struct stat base_status {};
    struct stat top_status {};
    if (::fstat(base.files()[0]->fd(), &base_status) != 0 || ::fstat(top.files()[0]->fd(), &top_status) != 0 ||
        base_status.st_dev != top_status.st_dev) {
        reason = "the base and the top are on different file systems";
        return std::nullopt;
    }
    if (base_status.st_nlink != 1) {
        reason = "the base file has other hard links";
        return std::nullopt;
    }

    std::string text = descriptor_with_cid(base.descriptor(), new_cid).text();
    File& top_file = *top.files()[0];
    SparseHeader header = read_valid_sparse_header(top_file, top_file.path().string());
    std::uint64_t area_size = header.descriptor_size * 512;
    if (header.descriptor_offset == 0 || text.size() + 1 > area_size) {
        reason = "the base's descriptor does not fit the top's descriptor area";
        return std::nullopt;
    }
    std::vector<std::uint8_t> area(text.begin(), text.end());
    area.resize(static_cast<std::size_t>(area_size), 0);
    return area;
}

void write_descriptor_area(const std::filesystem::path& path, const std::vector<std::uint8_t>& area)
{
    File file = File::open(path, Access::read_write);
    lock_exclusive(file);
    std::vector<std::uint8_t> bytes(sparse_header_size);
    bytes.resize(file.read_at(0, bytes));
    SparseHeader header = decode_sparse_header(bytes, path.string());
    if (!has_readable_descriptor_area(header, file.size()) || header.descriptor_size * 512 != area.size())
        throw InvalidInput(path.string() + ": descriptorSize: the embedded descriptor area is not the " +
                           std::to_string(area.size()) + " bytes the interrupted merge recorded; restore the chain "
                           "from a backup");
    file.write_exact(header.descriptor_offset * 512, area);
    file.sync_data();
}

}  // namespace vmcrypt::vmdk
