#include "core/engine/rewrite_engine.hpp"

#include "core/crypto/unit_hash.hpp"
#include "core/crypto/unit_cipher.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/engine/run_stream.hpp"
#include "core/engine/unit_transform.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/io/mapped_range.hpp"
#include "core/log.hpp"
#include "core/text/terminal_text.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <optional>
#include <set>
#include <linux/magic.h>
#include <sys/vfs.h>

namespace vmcrypt {

namespace {

// Windows are read, hashed, transformed and written in chunks of 256 KiB. A chunk then fits in the core's
// L2 cache (512 KiB to 2 MiB on current x86-64 cores) when the next pass over it starts: the hash right
// after the read, the write right after XTS. Whole-window passes went to memory for each of the four.
constexpr std::uint64_t cache_chunk_units = 512;

// Windows are hashed in chunks of 2 MiB. The thread that hashes a chunk also reads its pages into the
// mapping's page tables, and two threads doing so within the same 2 MiB wait for the lock of one page
// table page. With 256 KiB chunks that lock took 2.7% of an encrypt's time (perf, 4 GiB, tmpfs).
constexpr std::uint64_t hash_chunk_units = 4096;
static_assert(hash_chunk_units % cache_chunk_units == 0, "a hash chunk ends where a transform chunk ends");

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
    mutable std::mutex write_mutex;  // see write_pending

    Impl(Disk& d, const SecureBytes& dek, const SecureBytes* previous_dek, const RewriteOptions& o,
         const RecordFields& record)
        : disk(d), files(d.files()), cipher(make_unit_cipher(cipher_of(record), dek)),
          previous(previous_dek ? make_unit_cipher(cipher_aes_xts_plain64, *previous_dek) : nullptr), options(o),
          stream(d.data_runs()), zero_units(d.zero_unit_rule() == "plain" ? ZeroUnits::kept : ZeroUnits::transformed)
    {
    }

    // Reads (or writes) the window's bytes [begin, end) from (to) the segments they map to. `data` is
    // the address of byte `begin`.
    void read_range(std::uint8_t* data, const std::vector<RunSegment>& segments, std::uint64_t begin,
                    std::uint64_t end) const
    {
        for_each_piece(segments, begin, end, [&](File& file, std::uint64_t host_offset, std::uint64_t offset,
                                                 std::uint64_t length) {
            if (!file.read_exact(host_offset, {data + (offset - begin), length}))
                throw IoError(file.path().string() + ": short read at offset " + std::to_string(host_offset) +
                              ": the file shrank while vmcrypt was running");
        });
    }

    void write_range(const std::uint8_t* data, const std::vector<RunSegment>& segments, std::uint64_t begin,
                     std::uint64_t end) const
    {
        for_each_piece(segments, begin, end, [&](File& file, std::uint64_t host_offset, std::uint64_t offset,
                                                 std::uint64_t length) {
            file.write_exact(host_offset, {data + (offset - begin), length});
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

    // A window on its way through the pipeline: hashed and journaled in one step, transformed and
    // written in the next, synced and unmapped in the one after.
    struct Window {
        std::uint64_t position = 0;
        std::uint64_t length = 0;
        std::vector<RunSegment> segments;
        std::vector<std::optional<MappedRange>> mappings;
        // Per transform chunk: whether its old content was read from a mapping when it was hashed.
        std::vector<std::uint8_t> chunk_mapped;
        JournalEntry entry;

        std::uint64_t units() const { return length / 512; }
    };

    std::unique_ptr<Window> make_window(std::uint64_t position, std::uint64_t window_size) const
    {
        auto window = std::make_unique<Window>();
        window->position = position;
        window->length = std::min(window_size, stream.total_bytes() - position);
        window->segments = stream.segments(position, window->length);
        window->chunk_mapped.assign((window->units() + cache_chunk_units - 1) / cache_chunk_units, 0);
        window->entry.phase = JournalPhase::window;
        window->entry.window_start = position;
        window->entry.window_length = window->length;
        window->entry.unit_hashes.resize(window->units());
        return window;
    }

    // Per-thread buffers of transform chunks: old content read with pread, and two results, so that a
    // thread can transform its next chunk while its last result waits for the write lock.
    struct ChunkBuffers {
        struct PendingWrite {
            const Window* window = nullptr;
            std::uint64_t begin = 0;  // units
            std::uint64_t stop = 0;
            std::size_t result = 0;
        };

        std::unique_ptr<std::uint8_t[]> old_content{new std::uint8_t[cache_chunk_units * 512]};
        std::unique_ptr<std::uint8_t[]> results[2]{std::unique_ptr<std::uint8_t[]>(new std::uint8_t[cache_chunk_units * 512]),
                                                   std::unique_ptr<std::uint8_t[]>(new std::uint8_t[cache_chunk_units * 512])};
        std::vector<PendingWrite> pending;  // at most two, oldest first
    };

    // Whether write_pending() waits for the write lock or leaves the writes pending when another thread
    // holds it.
    enum class WriteWait { wait, if_free };

    // Hashes the old content of one hash chunk of `window`, from its mapping where the pages can be
    // read in, else with pread.
    void hash_chunk(Window& window, std::uint64_t index, ChunkBuffers& buffers) const
    {
        const std::uint64_t begin = index * hash_chunk_units;
        const std::uint64_t stop = std::min(window.units(), begin + hash_chunk_units);
        const bool populated = mapped_old_content(window.segments, window.mappings, begin * 512, stop * 512, true);
        for (std::uint64_t first = begin; first < stop; first += cache_chunk_units) {
            const std::uint64_t end = std::min(stop, first + cache_chunk_units);
            const std::uint8_t* old_content =
                mapped_old_content(window.segments, window.mappings, first * 512, end * 512, !populated);
            window.chunk_mapped[first / cache_chunk_units] = old_content != nullptr;
            if (!old_content) {
                read_range(buffers.old_content.get(), window.segments, first * 512, end * 512);
                old_content = buffers.old_content.get();
            }
            hash_units({old_content, (end - first) * 512}, {window.entry.unit_hashes.data() + first, end - first});
        }
    }

    // Transforms and writes one transform chunk of `window`. A chunk that was not read from a mapping
    // is read again with pread: keeping a window of old content until its turn would cost a
    // window-sized buffer per window in flight.
    void transform_chunk(Window& window, std::uint64_t index, Direction direction, ChunkBuffers& buffers) const
    {
        const std::uint64_t begin = index * cache_chunk_units;
        const std::uint64_t stop = std::min(window.units(), begin + cache_chunk_units);
        const std::uint8_t* old_content =
            window.chunk_mapped[index] ? mapped_old_content(window.segments, window.mappings, begin * 512, stop * 512)
                                       : nullptr;
        if (!old_content) {
            read_range(buffers.old_content.get(), window.segments, begin * 512, stop * 512);
            old_content = buffers.old_content.get();
        }
        const std::size_t result = buffers.pending.empty() ? 0 : 1 - buffers.pending.front().result;
        transform_units(*cipher, direction, {}, window.segments, {}, begin, stop, &window.entry.unit_hashes,
                        zero_units, previous.get(), old_content, buffers.results[result].get());
        buffers.pending.push_back({&window, begin, stop, result});
        write_pending(buffers, buffers.pending.size() < 2 ? WriteWait::if_free : WriteWait::wait);
    }

    // Writes the thread's pending results, one thread at a time. Writes to one file serialise on its
    // inode lock in the kernel anyway, and a thread that waits there spins: perf showed that spinning
    // at 5% of an encrypt's time on tmpfs. A thread that finds the lock taken transforms its next
    // chunk instead.
    void write_pending(ChunkBuffers& buffers, WriteWait wait) const
    {
        if (buffers.pending.empty())
            return;
        std::unique_lock lock(write_mutex, std::defer_lock);
        if (wait == WriteWait::wait)
            lock.lock();
        else if (!lock.try_lock())
            return;

        for (const ChunkBuffers::PendingWrite& write : buffers.pending) {
            write_range(buffers.results[write.result].get(), write.window->segments, write.begin * 512,
                        write.stop * 512);

            // The thread that writes the last chunk of a writeback group starts the group's writeback.
            // The hint skips the group's chunks that are not written yet.
            if (write.stop == write.window->units() || write.stop % writeback_group_units == 0) {
                const std::uint64_t group_begin = (write.stop - 1) / writeback_group_units * writeback_group_units;
                start_writeback(write.window->segments, group_begin * 512, write.stop * 512);
            }
        }
        buffers.pending.clear();
    }

    // Runs one step of the window pipeline on options.threads threads, the calling thread among them.
    // `retired`, written in the step before, is unmapped and synced. `next` is mapped, hashed and
    // journaled. `current`, journaled in the step before, is transformed and written. Any may be null.
    //
    // The crash-safety rule that orders them: a window is written only after its entry is durable,
    // and a window's entry is overwritten (by the entry two after it, in the same journal slot) only
    // after the window is synced. So at any moment the windows that may be partly written are those of
    // the two newest entries, and recovery redoes both. Within a step the threads first take the
    // hash chunks of `next`, then the transform chunks of `current`. The thread that hashes the last
    // chunk of `next` appends its entry, once `retired` is synced, while the other goes on writing.
    void run_step(Journal& journal, Window* retired, Window* current, Window* next, Direction direction,
                  std::vector<ChunkBuffers>& buffers)
    {
        const std::uint64_t hash_chunks = next ? (next->units() + hash_chunk_units - 1) / hash_chunk_units : 0;
        const std::uint64_t transform_chunks = current ? current->chunk_mapped.size() : 0;
        std::atomic<bool> map_claimed{false};
        std::atomic<bool> sync_claimed{false};
        std::atomic<bool> next_mapped{next == nullptr};
        std::atomic<bool> retired_synced{retired == nullptr};
        std::atomic<std::uint64_t> next_hash_chunk{0};
        std::atomic<std::uint64_t> hash_chunks_done{0};
        std::atomic<std::uint64_t> next_transform_chunk{0};
        std::atomic<bool> failed{false};
        std::exception_ptr failure;
        std::mutex failure_mutex;

        auto set_and_wake = [](std::atomic<bool>& flag) {
            flag.store(true);
            flag.notify_all();
        };
        auto journal_next = [&] {
            retired_synced.wait(false);
            if (failed)
                return;
            journal.append(next->entry);
            log_debug("window at stream offset " + std::to_string(next->position) + ", " +
                      std::to_string(next->length) + " bytes in " + std::to_string(next->segments.size()) +
                      " segments: journaled as entry " + std::to_string(next->entry.sequence));
            // COMMIT POINT: the window's old unit hashes are durable; from here a crash needs recovery.
            fault_point("window-journaled");

            // The disk reads the window after it while this step's other work goes on.
            const std::uint64_t after = next->position + next->length;
            if (after < stream.total_bytes())
                prefetch(stream.segments(after, std::min(journal.header().window_size, stream.total_bytes() - after)));
        };
        auto work = [&](unsigned thread) {
            try {
                if (!map_claimed.exchange(true) && next) {
                    next->mappings = map_segments(next->segments);
                    set_and_wake(next_mapped);
                }
                if (!sync_claimed.exchange(true) && retired) {
                    retired->mappings.clear();
                    sync_files(retired->segments);
                    fault_point("window-synced");
                    set_and_wake(retired_synced);
                }
                bool own_chunks_done = false;
                while (!failed) {
                    if (next_mapped.load()) {
                        if (const std::uint64_t index = next_hash_chunk++; index < hash_chunks) {
                            hash_chunk(*next, index, buffers[thread]);
                            if (++hash_chunks_done == hash_chunks)
                                journal_next();
                            continue;
                        }
                    }
                    if (const std::uint64_t index = next_transform_chunk++; index < transform_chunks) {
                        transform_chunk(*current, index, direction, buffers[thread]);
                        continue;
                    }
                    write_pending(buffers[thread], WriteWait::wait);
                    if (thread == 0 && current && !own_chunks_done) {
                        own_chunks_done = true;
                        fault_point("window-half-written");
                    }
                    if (!next_mapped.load()) {
                        next_mapped.wait(false);
                        continue;
                    }
                    break;
                }
            } catch (...) {
                {
                    std::lock_guard lock(failure_mutex);
                    if (!failure)
                        failure = std::current_exception();
                }
                failed = true;
                set_and_wake(next_mapped);
                set_and_wake(retired_synced);
            }
        };

        std::vector<std::thread> helpers;
        for (unsigned thread = 1; thread < buffers.size(); ++thread)
            helpers.emplace_back(work, thread);
        work(0);
        for (std::thread& helper : helpers)
            helper.join();
        if (failure)
            std::rethrow_exception(failure);
    }

    // Rewrites windows from `position` to the end, then completes the operation, in a pipeline of
    // steps (see run_step) that overlaps each window's journal write, mapping and sync with the
    // hashing and writing of its neighbours.
    //
    // XTS writes into private buffers and reaches the file only through pwrite. Transforming in place in
    // a shared mapping would expose half-done XTS passes (plaintext XOR tweak) to the file when the
    // process is killed, and such a unit is neither old nor new, so recovery could not repair it. A
    // pwrite that a signal interrupts stops at a page boundary, so each 512-byte unit is whole.
    std::uint64_t run_windows(Journal& journal, std::uint64_t position, Direction direction,
                              const MetadataWrite& final_metadata)
    {
        const std::uint64_t total = stream.total_bytes();
        const std::uint64_t window_size = journal.header().window_size;
        std::uint64_t rewritten = 0;
        std::vector<ChunkBuffers> buffers(std::max(1u, options.threads));

        std::unique_ptr<Window> retired;
        std::unique_ptr<Window> current;
        if (position < total) {
            check_stop(position);
            prefetch(stream.segments(position, std::min(window_size, total - position)));
            current = make_window(position, window_size);
            run_step(journal, nullptr, nullptr, current.get(), direction, buffers);
        }
        while (current) {
            if (options.stop_requested && options.stop_requested->load()) {
                if (retired)
                    sync_files(retired->segments);
                check_stop(current->position);
            }
            const std::uint64_t after = current->position + current->length;
            std::unique_ptr<Window> next = after < total ? make_window(after, window_size) : nullptr;
            run_step(journal, retired.get(), current.get(), next.get(), direction, buffers);

            rewritten += current->length;
            report(after);
            retired = std::move(current);
            current = std::move(next);
        }
        if (retired) {
            retired->mappings.clear();
            sync_files(retired->segments);
            fault_point("window-synced");
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

std::uint64_t window_size_for(const RewriteOptions& options, Disk& disk)
{
    if (options.window_size != 0)
        return options.window_size;
    for (const File* file : disk.files()) {
        struct statfs info {};
        if (::fstatfs(file->fd(), &info) != 0 || info.f_type != TMPFS_MAGIC)
            return 16ull << 20;
    }
    return 4ull << 20;
}

RewriteEngine::RewriteEngine(Disk& disk, const SecureBytes& dek, RewriteOptions options, const SecureBytes* previous_dek)
    : disk_(disk), dek_(dek), previous_dek_(previous_dek), options_(std::move(options))
{
    options_.window_size = window_size_for(options_, disk_);
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
        // The window before the newest may be partly written too (see run_step). Recovering a window
        // that is complete changes nothing.
        if (std::optional<JournalEntry> before = journal.window_before_newest())
            impl.recover_window(*before, direction);
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
