#include "core/engine/rewrite_engine.hpp"

#include "core/crypto/unit_hash.hpp"
#include "core/crypto/unit_cipher.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/engine/parallel_parts.hpp"
#include "core/engine/run_stream.hpp"
#include "core/engine/unit_transform.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/io/mapped_range.hpp"
#include "core/log.hpp"
#include "core/text/terminal_text.hpp"

#include <algorithm>
#include <optional>
#include <set>

namespace vmcrypt {

namespace {

// Windows are read, hashed, transformed and written in chunks of 256 KiB. A chunk then fits in the core's
// L2 cache (512 KiB to 2 MiB on current x86-64 cores) when the next pass over it starts: the hash right
// after the read, the write right after XTS. Whole-window passes went to memory for each of the four.
constexpr std::uint64_t cache_chunk_units = 512;

// Writeback of a window's written data starts per 4 MiB group, so the device writes while the rest of
// the window is transformed. A sync_file_range per 256 KiB chunk cost about 0.5 s per GiB on ext4.
constexpr std::uint64_t writeback_group_units = 8192;
static_assert(writeback_group_units % cache_chunk_units == 0, "a group ends where a chunk ends");

// Segments at least this long are read through a file mapping. A sparse extent's grains (64 KiB) are
// read with pread: a mapping per grain would cost more system calls than the copy it saves.
constexpr std::uint64_t min_mapped_segment = 1u << 20;

Direction direction_of(Operation operation)
{
    switch (operation) {
    case Operation::encrypt:
        return Direction::encrypt;
    case Operation::decrypt:
        return Direction::decrypt;
    case Operation::rekey:
        return Direction::reencrypt;
    case Operation::key_change:
        break;
    }
    throw InvalidInput("journal: a " + to_string(operation) + " journal has no data windows to rewrite");
}

std::string disk_name(Disk& disk)
{
    return disk.files().front()->path().string();
}

// True when the file already contains the bytes (and has the size) that `update` writes.
bool metadata_in_place(const std::vector<File*>& files, const MetadataWrite& update)
{
    if (update.file_index >= files.size())
        return false;
    const File& file = *files[update.file_index];
    if (update.truncate_to && file.size() != *update.truncate_to)
        return false;
    std::vector<std::uint8_t> current(update.bytes.size());
    return file.read_exact(update.offset, current) && current == update.bytes;
}

// The cipher that the operation's record names; a record without a cipher field means XTS.
std::string cipher_of(const RecordFields& record)
{
    for (const auto& [name, value] : record)
        if (name == "cipher")
            return value;
    return cipher_aes_xts_plain64;
}

}  // namespace

struct RewriteEngine::Impl {
    Disk& disk;
    std::vector<File*> files;
    std::unique_ptr<UnitCipher> cipher;
    std::unique_ptr<UnitCipher> previous;  // deep rekey: the DEK the data is under before its window
    const RewriteOptions& options;
    RunStream stream;
    ZeroUnits zero_units;

    Impl(Disk& d, const SecureBytes& dek, const SecureBytes* previous_dek, const RewriteOptions& o,
         const RecordFields& record)
        : disk(d), files(d.files()), cipher(make_unit_cipher(cipher_of(record), dek)),
          previous(previous_dek ? make_unit_cipher(cipher_aes_xts_plain64, *previous_dek) : nullptr), options(o),
          stream(d.data_runs()), zero_units(d.zero_unit_rule() == "plain" ? ZeroUnits::kept : ZeroUnits::transformed)
    {
    }

    // Reads (or writes) the bytes [begin, end) of the window buffer from (to) the segments they map to.
    void read_range(std::uint8_t* buffer, const std::vector<RunSegment>& segments, std::uint64_t begin,
                    std::uint64_t end) const
    {
        for_each_piece(segments, begin, end, [&](File& file, std::uint64_t host_offset, std::uint64_t offset,
                                                 std::uint64_t length) {
            if (!file.read_exact(host_offset, {buffer + offset, length}))
                throw IoError(file.path().string() + ": short read at offset " + std::to_string(host_offset) +
                              ": the file shrank while vmcrypt was running");
        });
    }

    void write_range(const std::uint8_t* buffer, const std::vector<RunSegment>& segments, std::uint64_t begin,
                     std::uint64_t end) const
    {
        for_each_piece(segments, begin, end, [&](File& file, std::uint64_t host_offset, std::uint64_t offset,
                                                 std::uint64_t length) {
            file.write_exact(host_offset, {buffer + offset, length});
        });
    }

    // Maps the window's long segments, so that their old content is hashed and transformed straight from
    // the page cache instead of being copied into the window buffer first. The result has one entry per
    // segment, empty where the segment is read with pread.
    std::vector<std::optional<MappedRange>> map_segments(const std::vector<RunSegment>& segments) const
    {
        std::vector<std::optional<MappedRange>> mappings(segments.size());
        for (std::size_t i = 0; i < segments.size(); ++i)
            if (segments[i].length >= min_mapped_segment)
                mappings[i] = MappedRange::map(*files.at(segments[i].file_index), segments[i].host_offset,
                                               segments[i].length, mapped_read_failure(segments[i]));
        return mappings;
    }

    // The line printed when a read through a segment's mapping fails, as pread's failures are reported.
    std::string mapped_read_failure(const RunSegment& segment) const
    {
        return terminal_line(files.at(segment.file_index)->path().string()) + ": read failed at offset " +
               std::to_string(segment.host_offset) + " or later: the file shrank or the device reported an error "
               "while vmcrypt was running; the disk is consistent: fix the cause and run `" + options.resume_command +
               "` to resume";
    }

    // Returns the old content of window bytes [begin, end) when one mapped segment contains all of it,
    // else null. With `populate`, the pages are read in first, and null is returned when that fails.
    static const std::uint8_t* mapped_old_content(const std::vector<RunSegment>& segments,
                                                  const std::vector<std::optional<MappedRange>>& mappings,
                                                  std::uint64_t begin, std::uint64_t end, bool populate = false)
    {
        auto after = std::upper_bound(segments.begin(), segments.end(), begin,
                                      [](std::uint64_t offset, const RunSegment& segment) {
                                          return offset < segment.buffer_offset;
                                      });
        if (after == segments.begin())
            return nullptr;
        const std::size_t index = static_cast<std::size_t>(after - segments.begin()) - 1;
        const RunSegment& segment = segments[index];
        if (!mappings[index] || end > segment.buffer_offset + segment.length)
            return nullptr;
        if (populate && !mappings[index]->populate(begin - segment.buffer_offset, end - begin))
            return nullptr;
        return mappings[index]->bytes().data() + (begin - segment.buffer_offset);
    }

    // Hints for disk-backed files. On tmpfs each costs a system call and does nothing.
    void prefetch(const std::vector<RunSegment>& segments) const
    {
        for (const RunSegment& segment : segments)
            files.at(segment.file_index)->prefetch(segment.host_offset, segment.length);
    }

    void start_writeback(const std::vector<RunSegment>& segments, std::uint64_t begin, std::uint64_t end) const
    {
        for_each_piece(segments, begin, end, [&](File& file, std::uint64_t host_offset, std::uint64_t, std::uint64_t length) {
            file.start_writeback(host_offset, length);
        });
    }

    template <typename Action>
    void for_each_piece(const std::vector<RunSegment>& segments, std::uint64_t begin, std::uint64_t end,
                        const Action& action) const
    {
        for (const RunSegment& segment : segments) {
            std::uint64_t piece_begin = std::max(begin, segment.buffer_offset);
            std::uint64_t piece_end = std::min(end, segment.buffer_offset + segment.length);
            if (piece_begin >= piece_end)
                continue;
            action(*files.at(segment.file_index), segment.host_offset + (piece_begin - segment.buffer_offset),
                   piece_begin, piece_end - piece_begin);
        }
    }

    void sync_files(const std::vector<RunSegment>& segments)
    {
        std::set<std::size_t> touched;
        for (const RunSegment& segment : segments)
            touched.insert(segment.file_index);
        for (std::size_t index : touched)
            files[index]->sync_data();
    }

    void check_stop(std::uint64_t position) const
    {
        if (options.stop_requested && options.stop_requested->load())
            throw Interrupted(files.front()->path().string() + ": stopped after " + std::to_string(position) + " of " +
                              std::to_string(stream.total_bytes()) + " bytes; the disk is consistent; run `" +
                              options.resume_command + "` to resume");
    }

    void report(std::uint64_t position) const
    {
        if (options.on_progress)
            options.on_progress({position, stream.total_bytes()});
    }

    // Redoes the window of a journal entry: transforms the units whose content still hashes to the old
    // value and leaves the others, which the interrupted run already rewrote.
    void recover_window(const JournalEntry& entry, Direction direction)
    {
        if (entry.window_start + entry.window_length > stream.total_bytes() ||
            entry.unit_hashes.size() != entry.window_length / 512)
            throw InvalidInput("journal: window entry does not match the disk's layout");

        std::vector<RunSegment> segments = stream.segments(entry.window_start, entry.window_length);
        std::vector<std::uint8_t> buffer(entry.window_length);
        read_range(buffer.data(), segments, 0, buffer.size());

        std::vector<std::uint64_t> hashes(entry.unit_hashes.size());
        hash_units(buffer, hashes);
        std::vector<bool> still_old(hashes.size());
        std::size_t old_count = 0;
        for (std::size_t i = 0; i < hashes.size(); ++i) {
            still_old[i] = hashes[i] == entry.unit_hashes[i];
            old_count += still_old[i] ? 1 : 0;
        }
        log_info("recovering the window at stream offset " + std::to_string(entry.window_start) + ": " +
                 std::to_string(old_count) + " of " + std::to_string(hashes.size()) + " units still to rewrite");

        transform_window(*cipher, direction, buffer, segments, still_old, options.threads, zero_units, previous.get());
        write_range(buffer.data(), segments, 0, buffer.size());
        sync_files(segments);
    }

    // Rewrites windows from `position` to the end, then completes the operation. The threads take
    // each window's chunks from a shared counter and do their chunks' reads, hashing, XTS and writes, so
    // the page cache copies are spread over the cores, not only the crypto.
    //
    // XTS runs on a private buffer and reaches the file only through pwrite. Transforming in place in
    // a shared mapping would expose half-done XTS passes (plaintext XOR tweak) to the file when the
    // process is killed, and such a unit is neither old nor new, so recovery could not repair it. A
    // pwrite that a signal interrupts stops at a page boundary, so each 512-byte unit is whole.
    std::uint64_t run_windows(Journal& journal, std::uint64_t position, Direction direction,
                              const MetadataWrite& final_metadata)
    {
        const std::uint64_t total = stream.total_bytes();
        const std::uint64_t window = journal.header().window_size;
        std::uint64_t rewritten = 0;

        // One buffer for all windows, not zero-filled: every byte is read before it is used.
        std::unique_ptr<std::uint8_t[]> storage(new std::uint8_t[std::min(window, std::max<std::uint64_t>(total, 512))]);
        std::uint8_t* buffer = storage.get();

        if (position < total)
            prefetch(stream.segments(position, std::min(window, total - position)));
        while (position < total) {
            check_stop(position);
            const std::uint64_t length = std::min(window, total - position);
            const std::uint64_t units = length / 512;
            const std::vector<RunSegment> segments = stream.segments(position, length);

            JournalEntry entry;
            entry.phase = JournalPhase::window;
            entry.window_start = position;
            entry.window_length = length;
            entry.unit_hashes.resize(units);
            const std::vector<std::optional<MappedRange>> mappings = map_segments(segments);
            // Whether each chunk's old content is read from its mapping (else from the window buffer).
            std::vector<std::uint8_t> chunk_mapped((units + cache_chunk_units - 1) / cache_chunk_units, 0);
            run_in_chunks(options.threads, units, cache_chunk_units, [&](std::uint64_t begin, std::uint64_t stop) {
                const std::uint8_t* old_content =
                    mapped_old_content(segments, mappings, begin * 512, stop * 512, true);
                chunk_mapped[begin / cache_chunk_units] = old_content != nullptr;
                if (!old_content) {
                    read_range(buffer, segments, begin * 512, stop * 512);
                    old_content = buffer + begin * 512;
                }
                hash_units({old_content, (stop - begin) * 512}, {entry.unit_hashes.data() + begin, stop - begin});
            }, [] {});
            journal.append(entry);
            log_debug("window at stream offset " + std::to_string(position) + ", " + std::to_string(length) +
                      " bytes in " + std::to_string(segments.size()) + " segments: journaled as entry " +
                      std::to_string(entry.sequence));
            // COMMIT POINT: the window's old unit hashes are durable; from here a crash needs recovery.
            fault_point("window-journaled");

            // The disk reads the next window's old content while this one is transformed, written and
            // synced, instead of after its sync.
            if (position + length < total)
                prefetch(stream.segments(position + length, std::min(window, total - position - length)));

            std::span<std::uint8_t> whole(buffer, length);
            // A chunk's old content is read from its mapping before the chunk is written, and only one
            // thread handles a chunk, so no chunk is read after its own write.
            run_in_chunks(options.threads, units, cache_chunk_units, [&](std::uint64_t begin, std::uint64_t stop) {
                const std::uint8_t* old_content =
                    chunk_mapped[begin / cache_chunk_units] ? mapped_old_content(segments, mappings, begin * 512, stop * 512)
                                                            : nullptr;
                transform_units(*cipher, direction, whole, segments, {}, begin, stop, &entry.unit_hashes, zero_units,
                                previous.get(), old_content);
                write_range(buffer, segments, begin * 512, stop * 512);

                // The thread that writes the last chunk of a writeback group starts the group's writeback.
                // The hint skips the group's chunks that the other thread has not written yet.
                if (stop == units || stop % writeback_group_units == 0) {
                    const std::uint64_t group_begin = (stop - 1) / writeback_group_units * writeback_group_units;
                    start_writeback(segments, group_begin * 512, stop * 512);
                }
            }, [] { fault_point("window-half-written"); });
            sync_files(segments);
            fault_point("window-synced");

            position += length;
            rewritten += length;
            report(position);
        }

        const MetadataWrite final_write = options.make_final_metadata ? options.make_final_metadata() : final_metadata;
        JournalEntry finish;
        finish.phase = JournalPhase::finalize;
        finish.window_start = total;
        finish.metadata = final_write;
        journal.append(finish);
        // COMMIT POINT: all data is rewritten; the final metadata is durable in the journal.
        fault_point("finalize-journaled");

        disk.apply(final_write);
        fault_point("final-metadata-written");
        journal.remove();
        return rewritten;
    }
};

RewriteEngine::RewriteEngine(Disk& disk, const SecureBytes& dek, RewriteOptions options, const SecureBytes* previous_dek)
    : disk_(disk), dek_(dek), previous_dek_(previous_dek), options_(std::move(options))
{
    if (options_.window_size == 0 || options_.window_size % 512 != 0)
        throw UsageError("--window-size: the window must be a positive multiple of 512 bytes");
}

RewriteResult RewriteEngine::start(const RewritePlan& plan)
{
    // vmcrypt only decrypts with a cipher other than XTS (legacy qcow AES); it never writes one.
    if (plan.operation != Operation::decrypt && cipher_of(plan.journal_record) != cipher_aes_xts_plain64)
        throw InvalidInput(disk_name(disk_) + ": a " + to_string(plan.operation) + " with cipher " +
                           cipher_of(plan.journal_record) + " is not supported; vmcrypt only decrypts it");
    Impl impl(disk_, dek_, previous_dek_, options_, plan.journal_record);

    JournalHeader header;
    header.operation = plan.operation;
    header.window_size = options_.window_size;
    header.total_bytes = impl.stream.total_bytes();
    header.layout_digest = impl.stream.layout_digest();
    header.record = plan.journal_record;

    JournalEntry first;
    first.phase = JournalPhase::metadata;
    first.metadata = plan.start_metadata;
    std::size_t max_metadata = std::max(plan.start_metadata.bytes.size(), plan.final_metadata.bytes.size());

    if (options_.stop_requested && options_.stop_requested->load())
        throw Interrupted(impl.files.front()->path().string() + ": stopped before any change; nothing was written");
    fault_point("before-journal-create");
    Journal journal = Journal::create(Journal::path_for(impl.files.front()->path()), header, first, max_metadata, dek_);
    // COMMIT POINT: the journal exists. Failures from here on leave an unfinished operation that re-running
    // the same command completes; before it, nothing on the disk had changed.
    fault_point("journal-created");
    log_info(to_string(plan.operation) + ": " + std::to_string(header.total_bytes) + " data bytes, windows of " +
             std::to_string(header.window_size) + " bytes, journal created");

    disk_.apply(plan.start_metadata);
    fault_point("start-metadata-written");
    impl.report(0);

    RewriteResult result;
    result.bytes_total = impl.stream.total_bytes();
    result.bytes_rewritten = impl.run_windows(journal, 0, direction_of(plan.operation), plan.final_metadata);
    return result;
}

RewriteResult RewriteEngine::resume(Journal journal, const MetadataWrite& final_metadata)
{
    Impl impl(disk_, dek_, previous_dek_, options_, journal.header().record);
    const JournalHeader& header = journal.header();

    // A crash after the final metadata write left only the journal to remove. The disk's layout may
    // read differently now (a legacy qcow AES image numbers its sectors by guest offset only until the
    // final header makes it plain), so this is checked before the layout.
    if (const JournalEntry last = journal.newest();
        last.phase == JournalPhase::finalize && metadata_in_place(impl.files, *last.metadata)) {
        log_info("resuming " + to_string(header.operation) + ": the final metadata is written already; "
                 "removing the journal");
        journal.remove();
        RewriteResult result;
        result.resumed = true;
        result.bytes_total = impl.stream.total_bytes();
        return result;
    }

    if (header.total_bytes != impl.stream.total_bytes() || header.layout_digest != impl.stream.layout_digest())
        throw InvalidInput(impl.files.front()->path().string() +
                           ": the disk's layout (grain tables or extents) changed since the interrupted " +
                           to_string(header.operation) + " started, so it cannot be resumed safely (a write to the disk, "
                           "or a copy of a flat extent that filled its holes: copy with cp --sparse=always); nothing "
                           "was written");

    Direction direction = direction_of(header.operation);
    JournalEntry entry = journal.newest();
    log_info("resuming " + to_string(header.operation) + " from journal entry " + std::to_string(entry.sequence) +
             " (phase " + to_string(entry.phase) + ")");
    std::uint64_t position = 0;

    RewriteResult result;
    result.resumed = true;
    result.bytes_total = impl.stream.total_bytes();
    switch (entry.phase) {
    case JournalPhase::metadata:
        disk_.apply(*entry.metadata);
        position = 0;
        break;
    case JournalPhase::window:
        impl.recover_window(entry, direction);
        position = entry.window_start + entry.window_length;
        break;
    case JournalPhase::finalize:
        disk_.apply(*entry.metadata);
        journal.remove();
        return result;
    }
    impl.report(position);
    result.bytes_rewritten = impl.run_windows(journal, position, direction, final_metadata);
    return result;
}

void replay_metadata(const std::filesystem::path& metadata_file, const MetadataWrite& update)
{
    if (update.file_index != 0)
        throw InvalidInput(metadata_file.string() + ": journal metadata entry names file " +
                           std::to_string(update.file_index) + ", expected the metadata file (0)");
    File file = File::open(metadata_file, Access::read_write);
    lock_exclusive(file);
    file.write_exact(update.offset, update.bytes);
    if (update.truncate_to)
        file.truncate(*update.truncate_to);
    file.sync_data();
}

}  // namespace vmcrypt
