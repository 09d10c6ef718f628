#include "formats/vmdk/base_writer.hpp"

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/io/free_space.hpp"
#include "formats/vmdk/grain_directory.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <optional>
#include <unistd.h>

namespace vmcrypt::vmdk {

namespace {

// Bytes written to one file before its data is synced and its grain table entries are written. Larger
// batches mean fewer syncs; a crash leaks at most one batch of appended grains until the next run trims it.
constexpr std::uint64_t batch_bytes = 256ull << 20;

constexpr std::size_t copy_buffer_bytes = 1 << 20;

// Bytes copied per call before writeback of the copied range is started. Starting it early lets the disk
// write while the next chunk is copied, instead of leaving all of it to the final fdatasync.
constexpr std::uint64_t writeback_chunk_bytes = 32ull << 20;

// Starts writeback of a written range without waiting for it (sync_file_range); durability still comes
// from the fdatasync of the batch. Errors are ignored here because that fdatasync reports them.
void start_writeback(const File& target, std::uint64_t offset, std::uint64_t length)
{
    ::sync_file_range(target.fd(), static_cast<off64_t>(offset), static_cast<off64_t>(length), SYNC_FILE_RANGE_WRITE);
}

// Copies `length` bytes between files, in the kernel where it can (copy_file_range), else through a buffer.
void copy_range(const File& source, std::uint64_t source_offset, File& target, std::uint64_t target_offset,
                std::uint64_t length)
{
    // The kernel's copy reads the source synchronously, a readahead window at a time, so the disk would
    // sit idle between reads. Asking for each next chunk while the current one is copied keeps it busy.
    source.prefetch(source_offset, std::min(length, writeback_chunk_bytes));
    while (length > 0) {
        loff_t in = static_cast<loff_t>(source_offset);
        loff_t out = static_cast<loff_t>(target_offset);
        std::size_t chunk = static_cast<std::size_t>(std::min(length, writeback_chunk_bytes));
        if (length > chunk)
            source.prefetch(source_offset + chunk, std::min(length - chunk, writeback_chunk_bytes));
        ssize_t copied = ::copy_file_range(source.fd(), &in, target.fd(), &out, chunk, 0);
        if (copied > 0) {
            start_writeback(target, target_offset, static_cast<std::uint64_t>(copied));
            source_offset += static_cast<std::uint64_t>(copied);
            target_offset += static_cast<std::uint64_t>(copied);
            length -= static_cast<std::uint64_t>(copied);
            continue;
        }
        if (copied == 0)
            throw InvalidInput(source.path().string() + ": ends at byte " + std::to_string(source_offset) +
                               " inside a grain; the delta is truncated, so restore it from a backup");
        if (errno == EINTR)
            continue;
        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
            throw IoError(source.path().string() + " -> " + target.path().string() + ": copy failed: " +
                          std::strerror(errno));

        std::vector<std::uint8_t> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(copy_buffer_bytes, length)));
        while (length > 0) {
            std::span<std::uint8_t> part(buffer.data(), static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), length)));
            if (!source.read_exact(source_offset, part))
                throw InvalidInput(source.path().string() + ": ends before byte " +
                                   std::to_string(source_offset + part.size()) +
                                   " inside a grain; the delta is truncated, so restore it from a backup");
            target.write_exact(target_offset, part);
            start_writeback(target, target_offset, part.size());
            source_offset += part.size();
            target_offset += part.size();
            length -= part.size();
        }
    }
}

void write_zeros(File& target, std::uint64_t offset, std::uint64_t length)
{
    static const std::vector<std::uint8_t> zeros(copy_buffer_bytes, 0);
    while (length > 0) {
        std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), length));
        target.write_exact(offset, {zeros.data(), chunk});
        offset += chunk;
        length -= chunk;
    }
}

}  // namespace

struct BaseWriter::Target {
    enum class Kind { flat, sparse, zero };

    Kind kind = Kind::zero;
    std::uint64_t guest_start = 0;  // bytes
    std::uint64_t guest_end = 0;
    File* file = nullptr;
    std::string name;
    std::uint64_t file_offset = 0;  // flat: byte of the file where the extent starts

    SparseHeader header;
    std::unique_ptr<SparseGrainTables> tables;
    std::uint64_t next_free_sector = 0;

    // New whole grains copied to the end of the file, merged while source and target both continue.
    struct Append {
        const File* source = nullptr;
        std::uint64_t source_offset = 0;
        std::uint64_t target_offset = 0;
        std::uint64_t length = 0;
    } append;

    // A new grain that only some runs cover, assembled in memory (the rest reads as zeros).
    std::optional<std::uint64_t> partial_grain;
    std::vector<std::uint8_t> partial;

    std::uint64_t unsynced_bytes = 0;
    bool changed = false;

    std::uint64_t grain_bytes(std::uint64_t grain) const
    {
        return std::min(header.grain_size, header.capacity - grain * header.grain_size) * 512;
    }
};

BaseWriter::BaseWriter(VmdkDisk& base) : base_(base)
{
    for (const VmdkDisk::ExtentFile& extent : base_.extent_files()) {
        auto target = std::make_unique<Target>();
        target->guest_start = extent.first_sector * 512;
        target->guest_end = (extent.first_sector + extent.line.sectors) * 512;
        target->file = extent.file;
        if (extent.line.type == "ZERO") {
            target->kind = Target::Kind::zero;
            target->name = "the ZERO extent on line " + std::to_string(extent.line.line_number);
        } else if (extent.line.type == "SPARSE") {
            target->kind = Target::Kind::sparse;
            target->name = extent.file->path().string();
            target->header = read_valid_sparse_header(*extent.file, target->name);
            target->tables = std::make_unique<SparseGrainTables>(*extent.file, target->header, target->name);
        } else {
            target->kind = Target::Kind::flat;
            target->name = extent.file->path().string();
            target->file_offset = extent.line.offset * 512;
        }
        targets_.push_back(std::move(target));
    }
}

BaseWriter::~BaseWriter() = default;

std::vector<std::pair<std::string, std::uint64_t>> BaseWriter::sparse_file_sizes() const
{
    std::vector<std::pair<std::string, std::uint64_t>> sizes;
    for (const auto& target : targets_)
        if (target->kind == Target::Kind::sparse)
            sizes.emplace_back(std::filesystem::weakly_canonical(target->file->path()).string(), target->file->size());
    return sizes;
}

// Calls `visit(target, piece)` for each part of `run` that lies in one extent.
template <typename Visit>
static void split_by_extent(std::vector<std::unique_ptr<BaseWriter::Target>>& targets, const GuestRun& run,
                            Visit&& visit)
{
    std::uint64_t end = run.guest_offset + run.length;
    for (auto& target : targets) {
        std::uint64_t start = std::max(run.guest_offset, target->guest_start);
        std::uint64_t stop = std::min(end, target->guest_end);
        if (start >= stop)
            continue;
        GuestRun piece = run;
        piece.guest_offset = start;
        piece.length = stop - start;
        if (piece.kind == GuestRunKind::data)
            piece.host_offset = run.host_offset + (start - run.guest_offset);
        visit(*target, piece);
    }
}

BaseWriteEstimate BaseWriter::check(const std::vector<GuestRun>& runs)
{
    BaseWriteEstimate estimate;
    std::map<Target*, std::uint64_t> new_grains;
    std::map<Target*, std::uint64_t> last_grain;

    for (const GuestRun& run : runs) {
        (run.kind == GuestRunKind::data ? estimate.data_bytes : estimate.zero_bytes) += run.length;
        split_by_extent(targets_, run, [&](Target& target, const GuestRun& piece) {
            if (target.kind == Target::Kind::flat) {
                // Zeros are written as bytes too, so a hole of a thin flat extent fills either way.
                const std::uint64_t host = target.file_offset + (piece.guest_offset - target.guest_start);
                if (std::uint64_t holes = unallocated_bytes(*target.file, host, piece.length))
                    estimate.allocated_bytes[target.file->path()] += holes;
                return;
            }
            if (piece.kind != GuestRunKind::data)
                return;
            if (target.kind == Target::Kind::zero)
                throw UnsupportedInput(base_.descriptor().file_name() + ": a snapshot stores data at guest byte " +
                                       std::to_string(piece.guest_offset) + ", which the base keeps in " + target.name +
                                       ", where nothing can be written; convert the chain instead with: qemu-img "
                                       "convert -O vmdk TOP.vmdk new.vmdk");
            std::uint64_t grain_bytes_full = target.header.grain_size * 512;
            std::uint64_t first = (piece.guest_offset - target.guest_start) / grain_bytes_full;
            std::uint64_t last = (piece.guest_offset + piece.length - 1 - target.guest_start) / grain_bytes_full;
            for (std::uint64_t grain = first; grain <= last; ++grain) {
                if (grain % grain_table_entry_count == 0)
                    target.tables->write_changed();  // nothing changed: drops the cached tables
                if (target.tables->entry(grain) > gte_zeroed)
                    continue;
                if (!target.tables->has_table(grain))
                    throw UnsupportedInput(target.name + ": grain directory entry " +
                                           std::to_string(grain / grain_table_entry_count) +
                                           " has no grain table, and vmcrypt does not add grain tables to a base; "
                                           "convert the chain instead with: qemu-img convert -O vmdk TOP.vmdk new.vmdk");
                auto seen = last_grain.find(&target);
                if (seen != last_grain.end() && seen->second == grain)
                    continue;
                last_grain[&target] = grain;
                ++new_grains[&target];
            }
        });
    }

    for (const auto& [target, count] : new_grains) {
        std::uint64_t appended = count * target->header.grain_size * 512;
        estimate.appended_bytes += appended;
        estimate.allocated_bytes[target->file->path()] += appended;
        std::uint64_t end_sector = (target->file->size() + 511) / 512 + count * target->header.grain_size;
        if (end_sector > 0xffffffffull)
            throw UnsupportedInput(target->name + ": merging the snapshots would grow the extent file past 2 TiB, "
                                                  "which its 32-bit grain table entries cannot address; convert the "
                                                  "chain instead with: qemu-img convert -O vmdk TOP.vmdk new.vmdk");
        target->tables->write_changed();
    }
    return estimate;
}

void BaseWriter::flush_appends(Target& target)
{
    Target::Append& append = target.append;
    if (append.length == 0)
        return;
    copy_range(*append.source, append.source_offset, *target.file, append.target_offset, append.length);
    target.unsynced_bytes += append.length;
    append = Target::Append{};
}

void BaseWriter::sync_batch(Target& target)
{
    flush_appends(target);
    // Commit order for new grains: their data is durable before a grain table entry points to it.
    target.file->sync_data();
    if (target.tables)
        target.tables->write_changed();
    target.unsynced_bytes = 0;
    fault_point("consolidate-batch-synced");
}

void BaseWriter::write_sparse(Target& target, const GuestRun& piece)
{
    std::uint64_t grain_bytes_full = target.header.grain_size * 512;
    std::uint64_t position = piece.guest_offset;
    std::uint64_t end = piece.guest_offset + piece.length;

    while (position < end) {
        std::uint64_t grain = (position - target.guest_start) / grain_bytes_full;
        std::uint64_t grain_start = target.guest_start + grain * grain_bytes_full;
        std::uint64_t grain_end = grain_start + target.grain_bytes(grain);
        std::uint64_t stop = std::min(end, grain_end);
        std::uint64_t length = stop - position;
        std::uint64_t source_offset = piece.host_offset + (position - piece.guest_offset);

        if (target.partial_grain && *target.partial_grain != grain) {
            // The assembled grain is complete: store it as a new grain.
            flush_appends(target);
            target.file->write_exact(target.next_free_sector * 512, target.partial);
            target.tables->set_entry(*target.partial_grain, static_cast<std::uint32_t>(target.next_free_sector));
            target.next_free_sector += target.header.grain_size;
            target.unsynced_bytes += target.partial.size();
            target.partial_grain.reset();
        }

        std::uint32_t entry = target.tables->entry(grain);
        if (entry > gte_zeroed) {
            std::uint64_t host = std::uint64_t{entry} * 512 + (position - grain_start);
            if (piece.kind == GuestRunKind::data)
                copy_range(*piece.file, source_offset, *target.file, host, length);
            else
                write_zeros(*target.file, host, length);
            target.unsynced_bytes += length;
        } else if (piece.kind == GuestRunKind::zero) {
            // Unallocated and zeroed grains of a base read as zeros already.
        } else if (position == grain_start && stop == grain_end) {
            std::uint64_t target_offset = target.next_free_sector * 512;
            Target::Append& append = target.append;
            bool continues = append.length > 0 && append.source == piece.file &&
                             append.source_offset + append.length == source_offset &&
                             append.target_offset + append.length == target_offset;
            if (!continues) {
                flush_appends(target);
                append = Target::Append{piece.file, source_offset, target_offset, 0};
            }
            append.length += length;
            target.tables->set_entry(grain, static_cast<std::uint32_t>(target.next_free_sector));
            target.next_free_sector += target.header.grain_size;
        } else {
            if (!target.partial_grain) {
                target.partial_grain = grain;
                target.partial.assign(static_cast<std::size_t>(target.grain_bytes(grain)), 0);
            }
            std::span<std::uint8_t> part(target.partial.data() + (position - grain_start), static_cast<std::size_t>(length));
            if (!piece.file->read_exact(source_offset, part))
                throw InvalidInput(piece.file->path().string() + ": ends before byte " +
                                   std::to_string(source_offset + length) +
                                   " inside a grain; the delta is truncated, so restore it from a backup");
        }

        position = stop;
        if (target.unsynced_bytes + target.append.length >= batch_bytes)
            sync_batch(target);
    }
}

void BaseWriter::write_piece(Target& target, const GuestRun& piece)
{
    target.changed = true;
    switch (target.kind) {
    case Target::Kind::zero:
        return;  // check() rejected data here, and a ZERO extent reads zeros already
    case Target::Kind::flat: {
        std::uint64_t host = target.file_offset + (piece.guest_offset - target.guest_start);
        if (piece.kind == GuestRunKind::data)
            copy_range(*piece.file, piece.host_offset, *target.file, host, piece.length);
        else
            write_zeros(*target.file, host, piece.length);
        target.unsynced_bytes += piece.length;
        if (target.unsynced_bytes >= batch_bytes)
            sync_batch(target);
        return;
    }
    case Target::Kind::sparse:
        write_sparse(target, piece);
        return;
    }
}

void BaseWriter::write(const std::vector<GuestRun>& runs, const std::function<void(const GuestRun&)>& on_run)
{
    for (auto& target : targets_)
        if (target->kind == Target::Kind::sparse)
            target->next_free_sector = std::max((target->file->size() + 511) / 512, target->header.overhead);

    for (const GuestRun& run : runs) {
        split_by_extent(targets_, run, [&](Target& target, const GuestRun& piece) { write_piece(target, piece); });
        if (on_run)
            on_run(run);
    }

    for (auto& target : targets_) {
        if (!target->changed)
            continue;
        if (target->partial_grain) {
            flush_appends(*target);
            target->file->write_exact(target->next_free_sector * 512, target->partial);
            target->tables->set_entry(*target->partial_grain, static_cast<std::uint32_t>(target->next_free_sector));
            target->next_free_sector += target->header.grain_size;
            target->partial_grain.reset();
        }
        sync_batch(*target);
        target->file->sync_data();  // the grain table entries of the last batch
    }
}

std::uint64_t BaseWriter::trim_unreferenced_grains(const std::string& file_path, std::uint64_t original_size)
{
    for (auto& target : targets_) {
        if (target->kind != Target::Kind::sparse ||
            std::filesystem::weakly_canonical(target->file->path()).string() != file_path)
            continue;
        std::uint64_t needed = std::max(original_size, target->header.overhead * 512);
        for (std::uint64_t grain = 0; grain < target->tables->grain_count(); ++grain) {
            if (grain % grain_table_entry_count == 0)
                target->tables->write_changed();  // nothing changed: drops the cached tables
            std::uint32_t entry = target->tables->entry(grain);
            if (entry > gte_zeroed)
                needed = std::max(needed, std::uint64_t{entry} * 512 + target->grain_bytes(grain));
        }
        target->tables->write_changed();
        std::uint64_t size = target->file->size();
        if (size <= needed)
            return 0;
        target->file->truncate(needed);
        target->file->sync_all();
        return size - needed;
    }
    return 0;
}

}  // namespace vmcrypt::vmdk
