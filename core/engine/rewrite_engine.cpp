#include "core/engine/rewrite_engine.hpp"

#include "core/crypto/unit_hash.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/engine/run_stream.hpp"
#include "core/engine/unit_transform.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"

#include <algorithm>
#include <future>
#include <set>

namespace vmcrypt {

namespace {

Direction direction_of(Operation operation)
{
    return operation == Operation::encrypt ? Direction::encrypt : Direction::decrypt;
}

}  // namespace

struct RewriteEngine::Impl {
    Disk& disk;
    std::vector<File*> files;
    XtsCipher cipher;
    const RewriteOptions& options;
    RunStream stream;

    Impl(Disk& d, const SecureBytes& dek, const RewriteOptions& o)
        : disk(d), files(d.files()), cipher(dek), options(o), stream(d.data_runs())
    {
    }

    void read_window(std::vector<std::uint8_t>& buffer, const std::vector<RunSegment>& segments) const
    {
        for (const RunSegment& segment : segments) {
            File& file = *files.at(segment.file_index);
            std::span<std::uint8_t> target(buffer.data() + segment.buffer_offset, segment.length);
            if (!file.read_exact(segment.host_offset, target))
                throw IoError(file.path().string() + ": short read at offset " +
                              std::to_string(segment.host_offset) + ": the file shrank while vmcrypt was running");
        }
    }

    void write_window(const std::vector<std::uint8_t>& buffer, const std::vector<RunSegment>& segments)
    {
        std::set<std::size_t> touched;
        for (std::size_t i = 0; i < segments.size(); ++i) {
            const RunSegment& segment = segments[i];
            files.at(segment.file_index)
                ->write_exact(segment.host_offset, {buffer.data() + segment.buffer_offset, segment.length});
            touched.insert(segment.file_index);
            if (i == segments.size() / 2)
                fault_point("window-half-written");
        }
        for (std::size_t index : touched)
            files[index]->sync_data();
    }

    void check_stop(std::uint64_t position) const
    {
        if (options.stop_requested && options.stop_requested->load())
            throw Interrupted("stopped after " + std::to_string(position) + " of " +
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
        read_window(buffer, segments);

        std::vector<std::uint64_t> hashes(entry.unit_hashes.size());
        hash_units(buffer, hashes);
        std::vector<bool> still_old(hashes.size());
        for (std::size_t i = 0; i < hashes.size(); ++i)
            still_old[i] = hashes[i] == entry.unit_hashes[i];

        transform_window(cipher, direction, buffer, segments, still_old, options.threads);
        write_window(buffer, segments);
    }

    // Rewrites windows from `position` to the end, then completes the operation.
    std::uint64_t run_windows(Journal& journal, std::uint64_t position, Direction direction,
                              const MetadataWrite& final_metadata)
    {
        const std::uint64_t total = stream.total_bytes();
        const std::uint64_t window = journal.header().window_size;
        std::uint64_t rewritten = 0;

        auto load = [this](std::uint64_t start, std::uint64_t length) {
            std::vector<std::uint8_t> buffer(length);
            read_window(buffer, stream.segments(start, length));
            return buffer;
        };

        // The next window is read while the current one is transformed and written (two buffers).
        std::future<std::vector<std::uint8_t>> next;
        if (position < total)
            next = std::async(std::launch::async, load, position, std::min(window, total - position));

        while (position < total) {
            check_stop(position);
            std::uint64_t length = std::min(window, total - position);
            std::vector<std::uint8_t> buffer = next.get();
            std::vector<RunSegment> segments = stream.segments(position, length);

            JournalEntry entry;
            entry.phase = JournalPhase::window;
            entry.window_start = position;
            entry.window_length = length;
            entry.unit_hashes.resize(length / 512);
            hash_units(buffer, entry.unit_hashes);
            journal.append(entry);
            // COMMIT POINT: the window's old unit hashes are durable; from here a crash needs recovery.
            fault_point("window-journaled");

            std::uint64_t next_position = position + length;
            if (next_position < total)
                next = std::async(std::launch::async, load, next_position, std::min(window, total - next_position));

            transform_window(cipher, direction, buffer, segments, {}, options.threads);
            write_window(buffer, segments);
            fault_point("window-synced");

            position = next_position;
            rewritten += length;
            report(position);
        }

        JournalEntry finish;
        finish.phase = JournalPhase::finalize;
        finish.window_start = total;
        finish.metadata = final_metadata;
        journal.append(finish);
        // COMMIT POINT: all data is rewritten; the final metadata is durable in the journal.
        fault_point("finalize-journaled");

        disk.apply(final_metadata);
        fault_point("final-metadata-written");
        journal.remove();
        return rewritten;
    }
};

RewriteEngine::RewriteEngine(Disk& disk, const SecureBytes& dek, RewriteOptions options)
    : disk_(disk), dek_(dek), options_(std::move(options))
{
    if (options_.window_size == 0 || options_.window_size % 512 != 0)
        throw UsageError("--window-size: the window must be a positive multiple of 512 bytes");
}

RewriteResult RewriteEngine::start(const RewritePlan& plan)
{
    Impl impl(disk_, dek_, options_);

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
    Impl impl(disk_, dek_, options_);
    const JournalHeader& header = journal.header();
    if (header.total_bytes != impl.stream.total_bytes() || header.layout_digest != impl.stream.layout_digest())
        throw InvalidInput(impl.files.front()->path().string() +
                           ": the disk's layout (grain tables or extents) changed since the interrupted " +
                           to_string(header.operation) + " started, so it cannot be resumed safely");

    Direction direction = direction_of(header.operation);
    JournalEntry entry = journal.newest();
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
