#include "core/engine/journal.hpp"

#include "core/crypto/kdf.hpp"
#include "core/crypto/mac.hpp"
#include "core/crypto/random.hpp"
#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/record/encryption_record.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <unistd.h>

namespace vmcrypt {

namespace {

constexpr std::uint64_t header_area = 8192;
// 2: entries with a separate header sector. 3: the window after the current one may be journaled
// before the current one is synced, so recovery redoes the two newest window entries. A version 2
// journal is a special case of version 3, because its older entry's window is always synced, so both
// are read. A vmcrypt that reads only version 2 rejects version 3 instead of recovering one window of two.
constexpr std::uint32_t journal_version = 3;
constexpr std::uint32_t oldest_readable_version = 2;
// The unit hash the entries were made with; recovery must compare with the same function.
constexpr std::uint32_t unit_hash_xxh3_64 = 1;
constexpr char header_magic[8] = {'V', 'M', 'C', 'R', 'Y', 'P', 'T', 'J'};
constexpr char entry_magic[8] = {'V', 'M', 'C', 'J', 'E', 'N', 'T', '2'};
constexpr std::string_view mac_label = "vmcrypt journal mac v1";
// An entry is a 512-byte header sector followed by its body (metadata bytes, then unit hashes).
constexpr std::size_t entry_header_size = 512;
constexpr std::size_t mac_size = 32;
// A journal never needs more: 1 GiB windows give 16 MiB of unit hashes.
constexpr std::uint64_t max_slot_size = 64ull << 20;

class Writer {
public:
    void u32(std::uint32_t v)
    {
        for (int i = 0; i < 4; ++i)
            bytes.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    void u64(std::uint64_t v)
    {
        for (int i = 0; i < 8; ++i)
            bytes.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    void raw(const void* data, std::size_t n)
    {
        auto p = static_cast<const std::uint8_t*>(data);
        bytes.insert(bytes.end(), p, p + n);
    }
    std::vector<std::uint8_t> bytes;
};

// Bounds-checked reader: every read past the end throws, which callers turn into "damaged".
class Reader {
public:
    Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    std::uint32_t u32()
    {
        need(4);
        std::uint32_t v = 0;
        for (int i = 0; i < 4; ++i)
            v |= static_cast<std::uint32_t>(data_[pos_ + i]) << (8 * i);
        pos_ += 4;
        return v;
    }
    std::uint64_t u64()
    {
        need(8);
        std::uint64_t v = 0;
        for (int i = 0; i < 8; ++i)
            v |= static_cast<std::uint64_t>(data_[pos_ + i]) << (8 * i);
        pos_ += 8;
        return v;
    }
    void raw(void* out, std::size_t n)
    {
        need(n);
        std::memcpy(out, data_ + pos_, n);
        pos_ += n;
    }
    std::size_t position() const { return pos_; }

private:
    void need(std::size_t n)
    {
        if (n > size_ - pos_)
            throw std::out_of_range("journal field past the end");
    }
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

std::vector<std::uint8_t> encode_header(const JournalHeader& header)
{
    Writer w;
    w.raw(header_magic, 8);
    w.u32(journal_version);
    w.u32(static_cast<std::uint32_t>(header.operation));
    w.u32(unit_hash_xxh3_64);
    w.u64(header.window_size);
    w.u64(header.total_bytes);
    w.u64(header.slot_size);
    w.raw(header.journal_id.data(), header.journal_id.size());
    w.raw(header.layout_digest.data(), header.layout_digest.size());
    std::string record = fields_to_text(header.record);
    w.u32(static_cast<std::uint32_t>(record.size()));
    w.raw(record.data(), record.size());
    return w.bytes;
}

JournalHeader decode_header(const std::uint8_t* data, std::size_t size, std::size_t& encoded_length)
{
    Reader r(data, size);
    char magic[8];
    r.raw(magic, 8);
    if (std::memcmp(magic, header_magic, 8) != 0)
        throw InvalidInput("bad magic");
    if (std::uint32_t version = r.u32(); version < oldest_readable_version || version > journal_version)
        throw UnsupportedInput("journal version " + std::to_string(version) + " is not " +
                               std::to_string(oldest_readable_version) + " to " + std::to_string(journal_version) +
                               "; finish the operation with the vmcrypt version that started it");

    JournalHeader header;
    std::uint32_t operation = r.u32();
    if (operation < 1 || operation > 4)
        throw InvalidInput("unknown operation " + std::to_string(operation));
    header.operation = static_cast<Operation>(operation);
    if (std::uint32_t hash = r.u32(); hash != unit_hash_xxh3_64)
        throw UnsupportedInput("unit hash " + std::to_string(hash) + " is not known to this vmcrypt");
    header.window_size = r.u64();
    header.total_bytes = r.u64();
    header.slot_size = r.u64();
    if (header.slot_size == 0 || header.slot_size > max_slot_size || header.slot_size % 4096 != 0)
        throw InvalidInput("slot size " + std::to_string(header.slot_size) + " is invalid");
    if (header.window_size == 0 || header.window_size % 512 != 0)
        throw InvalidInput("window size " + std::to_string(header.window_size) + " is invalid");
    r.raw(header.journal_id.data(), header.journal_id.size());
    r.raw(header.layout_digest.data(), header.layout_digest.size());
    std::uint32_t record_length = r.u32();
    if (record_length > header_area)
        throw InvalidInput("record length is invalid");
    std::string record(record_length, '\0');
    r.raw(record.data(), record.size());
    header.record = fields_from_text(record);
    encoded_length = r.position();
    return header;
}

// The fields of an entry's header sector, before its two MACs.
std::vector<std::uint8_t> encode_entry_fields(const JournalEntry& entry, std::uint64_t body_length)
{
    Writer w;
    w.raw(entry_magic, 8);
    w.u64(entry.sequence);
    w.u32(static_cast<std::uint32_t>(entry.phase));
    w.u32(0);
    w.u64(entry.window_start);
    w.u64(entry.window_length);
    w.u64(entry.unit_hashes.size());
    const MetadataWrite empty;
    const MetadataWrite& m = entry.metadata ? *entry.metadata : empty;
    w.u64(m.bytes.size());
    w.u64(m.file_index);
    w.u64(m.offset);
    w.u64(m.truncate_to ? 1 : 0);
    w.u64(m.truncate_to.value_or(0));
    w.u64(body_length);
    return w.bytes;
}

// A 16 MiB window has 256 KiB of unit hashes, and the body is encoded on the way to every window's
// writes, so it is built with one allocation and, on little-endian hosts, one copy.
std::vector<std::uint8_t> encode_entry_body(const JournalEntry& entry)
{
    const std::size_t metadata_length = entry.metadata ? entry.metadata->bytes.size() : 0;
    std::vector<std::uint8_t> body(metadata_length + 8 * entry.unit_hashes.size());
    if (metadata_length > 0)
        std::memcpy(body.data(), entry.metadata->bytes.data(), metadata_length);
    std::uint8_t* out = body.data() + metadata_length;
    if constexpr (std::endian::native == std::endian::little) {
        if (!entry.unit_hashes.empty())
            std::memcpy(out, entry.unit_hashes.data(), 8 * entry.unit_hashes.size());
    } else {
        for (std::uint64_t hash : entry.unit_hashes) {
            for (int i = 0; i < 8; ++i)
                *out++ = static_cast<std::uint8_t>(hash >> (8 * i));
        }
    }
    return body;
}

// An entry header as read back: the fields, where its body is, and the MACs to check.
struct EntryHeader {
    JournalEntry entry;  // without metadata bytes and unit hashes
    std::uint64_t metadata_length = 0;
    std::uint64_t body_length = 0;
    std::vector<std::uint8_t> fields;  // the encoded fields, as covered by the header MAC
    std::array<std::uint8_t, 32> body_mac{};
    std::array<std::uint8_t, 32> header_mac{};
};

EntryHeader decode_entry_header(const std::uint8_t* data, std::size_t size, std::uint64_t slot_size)
{
    Reader r(data, size);
    char magic[8];
    r.raw(magic, 8);
    if (std::memcmp(magic, entry_magic, 8) != 0)
        throw InvalidInput("bad entry magic");

    EntryHeader header;
    JournalEntry& entry = header.entry;
    entry.sequence = r.u64();
    std::uint32_t phase = r.u32();
    if (phase < 1 || phase > 3)
        throw InvalidInput("unknown phase");
    entry.phase = static_cast<JournalPhase>(phase);
    r.u32();
    entry.window_start = r.u64();
    entry.window_length = r.u64();
    std::uint64_t unit_count = r.u64();
    header.metadata_length = r.u64();
    MetadataWrite metadata;
    metadata.file_index = r.u64();
    metadata.offset = r.u64();
    bool truncate = r.u64() != 0;
    std::uint64_t truncate_to = r.u64();
    header.body_length = r.u64();
    if (unit_count > slot_size / 8 || header.metadata_length > slot_size ||
        header.body_length != header.metadata_length + 8 * unit_count ||
        header.body_length > slot_size - entry_header_size)
        throw InvalidInput("entry sizes are invalid");
    if (truncate)
        metadata.truncate_to = truncate_to;
    if (entry.phase != JournalPhase::window)
        entry.metadata = std::move(metadata);
    entry.unit_hashes.resize(unit_count);

    header.fields.assign(data, data + r.position());
    r.raw(header.body_mac.data(), header.body_mac.size());
    r.raw(header.header_mac.data(), header.header_mac.size());
    return header;
}

void decode_entry_body(const std::vector<std::uint8_t>& body, EntryHeader& header)
{
    Reader r(body.data(), body.size());
    if (header.entry.metadata) {
        header.entry.metadata->bytes.resize(header.metadata_length);
        r.raw(header.entry.metadata->bytes.data(), header.metadata_length);
    } else {
        std::vector<std::uint8_t> skipped(header.metadata_length);
        r.raw(skipped.data(), skipped.size());
    }
    if constexpr (std::endian::native == std::endian::little) {
        if (!header.entry.unit_hashes.empty())
            r.raw(header.entry.unit_hashes.data(), 8 * header.entry.unit_hashes.size());
    } else {
        for (std::uint64_t& hash : header.entry.unit_hashes)
            hash = r.u64();
    }
}

// Entry `sequence` always lives in slot sequence % 2, so a new entry never overwrites the newest one.
std::uint64_t slot_offset(std::uint64_t sequence, std::uint64_t slot_size)
{
    return header_area + (sequence % 2) * slot_size;
}

std::uint64_t round_up(std::uint64_t value, std::uint64_t alignment)
{
    return (value + alignment - 1) / alignment * alignment;
}

// A slot contains the entry header, the metadata write and 8 bytes of unit hash per 512-byte unit.
std::uint64_t slot_size_for(std::uint64_t window_size, std::size_t max_metadata_bytes)
{
    return round_up(entry_header_size + max_metadata_bytes + 8 * (window_size / 512), 4096);
}

}  // namespace

std::string to_string(JournalPhase phase)
{
    switch (phase) {
    case JournalPhase::metadata:
        return "starting";
    case JournalPhase::window:
        return "rewriting";
    case JournalPhase::finalize:
        return "finishing";
    }
    return "unknown";
}

std::string to_string(Operation operation)
{
    switch (operation) {
    case Operation::encrypt:
        return "encrypt";
    case Operation::decrypt:
        return "decrypt";
    case Operation::rekey:
        return "rekey";
    case Operation::key_change:
        return "key-slot change";
    }
    return "unknown";
}

struct Journal::State {
    std::filesystem::path path;
    File file;
    SecureBytes mac_key;
    std::uint64_t sequence = 0;  // of the newest entry written or found
    std::optional<EntryHeader> older;  // the other slot's header, as newest() found it

    // MACs bind the journal id, so entries cannot be moved between journals. The body MAC also binds
    // the sequence number, so a body left from an older entry never passes for a newer one.
    Mac body_mac(const std::vector<std::uint8_t>& body, std::uint64_t entry_sequence, const JournalHeader& header) const
    {
        Writer w;
        w.raw(header.journal_id.data(), header.journal_id.size());
        w.u64(entry_sequence);
        return hmac_sha256(mac_key, {std::span<const std::uint8_t>(w.bytes), std::span<const std::uint8_t>(body)});
    }

    Mac header_mac(const std::vector<std::uint8_t>& fields, const Mac& body, const JournalHeader& header) const
    {
        Writer w;
        w.raw(header.journal_id.data(), header.journal_id.size());
        w.raw(fields.data(), fields.size());
        w.raw(body.data(), body.size());
        return hmac_sha256(mac_key, w.bytes);
    }

    // The header sector and the body of an entry, ready to write.
    std::pair<std::vector<std::uint8_t>, std::vector<std::uint8_t>> encode(const JournalEntry& entry,
                                                                          const JournalHeader& header) const
    {
        std::vector<std::uint8_t> body = encode_entry_body(entry);
        std::vector<std::uint8_t> sector = encode_entry_fields(entry, body.size());
        Mac body_check = body_mac(body, entry.sequence, header);
        Mac header_check = header_mac(sector, body_check, header);
        sector.insert(sector.end(), body_check.begin(), body_check.end());
        sector.insert(sector.end(), header_check.begin(), header_check.end());
        sector.resize(entry_header_size, 0);
        if (entry_header_size + body.size() > header.slot_size)
            throw InvalidInput(path.string() + ": journal entry does not fit its slot");
        return {std::move(sector), std::move(body)};
    }
};

Journal::Journal() : state_(std::make_unique<State>()) {}
Journal::Journal(Journal&&) noexcept = default;
Journal& Journal::operator=(Journal&&) noexcept = default;
Journal::~Journal() = default;

std::filesystem::path Journal::path_for(const std::filesystem::path& metadata_file)
{
    std::filesystem::path path = metadata_file;
    path += ".vmcrypt-journal";
    return path;
}

std::optional<JournalSummary> Journal::peek(const std::filesystem::path& path)
{
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        return std::nullopt;

    File file = File::open(path, Access::read_only);
    std::vector<std::uint8_t> head(header_area);
    std::size_t n = file.read_at(0, head);
    JournalSummary summary;
    std::size_t length = 0;
    try {
        summary.header = decode_header(head.data(), n, length);
    } catch (const std::exception& e) {
        throw InvalidInput(path.string() + ": not a valid vmcrypt journal (" + e.what() +
                           "); it was damaged or is not vmcrypt's");
    }

    // The newest well-formed entry header, without MAC verification (no body: inspect shows positions).
    std::vector<std::uint8_t> sector(entry_header_size);
    for (std::uint64_t sequence_parity = 0; sequence_parity < 2; ++sequence_parity) {
        std::size_t got = file.read_at(slot_offset(sequence_parity, summary.header.slot_size), sector);
        try {
            EntryHeader header = decode_entry_header(sector.data(), got, summary.header.slot_size);
            if (!summary.newest || header.entry.sequence > summary.newest->sequence)
                summary.newest = std::move(header.entry);
        } catch (const std::exception&) {
            // A never-written or damaged slot.
        }
    }

    // create() gives the file its full size before the rename, so a shorter file was cut.
    const std::uint64_t expected_size = header_area + 2 * summary.header.slot_size;
    const std::uint64_t size = file.size();
    if (size < expected_size)
        summary.damage = "the file is " + std::to_string(size) + " bytes, shorter than the " +
                         std::to_string(expected_size) + " bytes vmcrypt creates, so it was truncated";
    else if (!summary.newest)
        summary.damage = "no entry header is well-formed";
    return summary;
}

std::uint64_t Journal::file_size(std::uint64_t window_size, std::size_t max_metadata_bytes)
{
    return header_area + 2 * slot_size_for(window_size, max_metadata_bytes);
}

Journal Journal::create(const std::filesystem::path& path, JournalHeader header, const JournalEntry& first,
                        std::size_t max_metadata_bytes, const SecureBytes& dek)
{
    header.slot_size = slot_size_for(header.window_size, max_metadata_bytes);
    if (header.slot_size > max_slot_size)
        throw UsageError("--window-size: a window of " + std::to_string(header.window_size >> 20) +
                         " MiB needs a journal slot above the 64 MiB limit; use a smaller window");
    SecureBytes id = random_bytes(header.journal_id.size());
    std::copy(id.begin(), id.end(), header.journal_id.begin());

    Journal journal;
    journal.header_ = header;
    journal.state_->path = path;
    journal.state_->mac_key = hkdf_sha256(dek, mac_label, 32);

    std::vector<std::uint8_t> head = encode_header(header);
    if (head.size() + mac_size > header_area)
        throw InvalidInput(path.string() + ": the encryption record is too large for the journal header");
    Mac head_mac = hmac_sha256(journal.state_->mac_key, head);
    head.insert(head.end(), head_mac.begin(), head_mac.end());
    head.resize(header_area, 0);

    JournalEntry entry = first;
    entry.sequence = 1;
    auto [sector, body] = journal.state_->encode(entry, header);

    // Slot 0 gets a valid placeholder header (sequence 0, empty body), so that an all-zero header sector
    // is always damage and never "not written yet".
    JournalEntry placeholder;
    placeholder.sequence = 0;
    placeholder.phase = JournalPhase::metadata;
    auto [placeholder_sector, placeholder_body] = journal.state_->encode(placeholder, header);

    // COMMIT POINT: the journal appears under its real name only once complete and durable.
    std::filesystem::path temporary = path;
    temporary += ".tmp";
    std::filesystem::remove(temporary);
    try {
        File file = File::create_new(temporary, 0600);
        file.write_exact(0, head);
        file.write_exact(slot_offset(placeholder.sequence, header.slot_size), placeholder_sector);
        file.write_exact(slot_offset(entry.sequence, header.slot_size), sector);
        file.write_exact(slot_offset(entry.sequence, header.slot_size) + entry_header_size, body);
        file.truncate(header_area + 2 * header.slot_size);
        file.sync_all();
    } catch (...) {
        // Nothing changed yet: the disk is untouched, so leave no half-written journal behind either.
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        throw;
    }
    std::filesystem::rename(temporary, path);
    sync_directory(path.parent_path());

    journal.state_->file = File::open(path, Access::read_write);
    journal.state_->sequence = 1;
    return journal;
}

Journal Journal::open(const std::filesystem::path& path, const SecureBytes& dek)
{
    Journal journal;
    journal.state_->path = path;
    journal.state_->file = File::open(path, Access::read_write);
    journal.state_->mac_key = hkdf_sha256(dek, mac_label, 32);

    std::vector<std::uint8_t> head(header_area);
    std::size_t n = journal.state_->file.read_at(0, head);
    std::size_t length = 0;
    try {
        journal.header_ = decode_header(head.data(), n, length);
    } catch (const std::exception& e) {
        throw InvalidInput(path.string() + ": not a valid vmcrypt journal (" + e.what() + ")");
    }
    std::vector<std::uint8_t> encoded(head.begin(), head.begin() + static_cast<std::ptrdiff_t>(length));
    Mac expected = hmac_sha256(journal.state_->mac_key, encoded);
    if (length + mac_size > n || !equal_constant_time(expected, {head.data() + length, mac_size}))
        throw InvalidInput(path.string() + ": journal header fails its MAC check: it was not written with this "
                           "disk's key, or it was modified; do not delete it, report the disk");
    return journal;
}

JournalEntry Journal::newest() const
{
    const std::string damaged = state_->path.string() + ": the journal is damaged (";
    const std::string cannot_resume = "); the last window may already be rewritten, so vmcrypt cannot resume "
                                      "safely: keep the journal and the disk as they are and restore the disk from "
                                      "a backup";

    // Header sectors are written whole (the atomic unit), after their body is durable, and slot 0 starts
    // with a placeholder header. So after any crash both slots hold a valid header.
    std::optional<EntryHeader> headers[2];
    std::vector<std::uint8_t> sector(entry_header_size);
    for (std::uint64_t parity = 0; parity < 2; ++parity) {
        std::size_t got = state_->file.read_at(slot_offset(parity, header_.slot_size), sector);
        try {
            EntryHeader header = decode_entry_header(sector.data(), got, header_.slot_size);
            Mac expected = state_->header_mac(header.fields, header.body_mac, header_);
            if (equal_constant_time(expected, header.header_mac) && header.entry.sequence % 2 == parity)
                headers[parity] = std::move(header);
        } catch (const std::exception&) {
            // Judged below.
        }
    }

    std::uint64_t newest_parity = 0;
    if (!headers[0] && !headers[1])
        throw InvalidInput(damaged + "no entry header passes its MAC check" + cannot_resume);
    if (!headers[0] || (headers[1] && headers[1]->entry.sequence > headers[0]->entry.sequence))
        newest_parity = 1;
    EntryHeader& newest = *headers[newest_parity];
    std::uint64_t other = 1 - newest_parity;
    if (!headers[other] || newest.entry.sequence == 0)
        throw InvalidInput(damaged + "the header of the entry before " + std::to_string(newest.entry.sequence) +
                           " fails its MAC check" + cannot_resume);

    // The newest entry's body must be intact: its header was written only after the body was synced.
    std::vector<std::uint8_t> body(newest.body_length);
    std::uint64_t body_offset = slot_offset(newest.entry.sequence, header_.slot_size) + entry_header_size;
    if (!state_->file.read_exact(body_offset, body))
        throw InvalidInput(damaged + "entry " + std::to_string(newest.entry.sequence) + " is cut short" + cannot_resume);
    Mac expected = state_->body_mac(body, newest.entry.sequence, header_);
    if (!equal_constant_time(expected, newest.body_mac))
        throw InvalidInput(damaged + "the body of entry " + std::to_string(newest.entry.sequence) +
                           " fails its MAC check" + cannot_resume);
    decode_entry_body(body, newest);

    state_->sequence = newest.entry.sequence;
    state_->older = std::move(headers[other]);
    return newest.entry;
}

std::optional<JournalEntry> Journal::window_before_newest() const
{
    if (!state_->older)
        throw std::logic_error("Journal::window_before_newest called before newest");
    EntryHeader older = *state_->older;
    if (older.entry.phase != JournalPhase::window || older.entry.sequence + 1 != state_->sequence)
        return std::nullopt;

    // A body that does not verify was overwritten by an append of the entry after the newest, which
    // starts only once this entry's window is synced.
    std::vector<std::uint8_t> body(older.body_length);
    std::uint64_t body_offset = slot_offset(older.entry.sequence, header_.slot_size) + entry_header_size;
    if (!state_->file.read_exact(body_offset, body) ||
        !equal_constant_time(state_->body_mac(body, older.entry.sequence, header_), older.body_mac))
        return std::nullopt;
    decode_entry_body(body, older);
    return older.entry;
}

void Journal::append(JournalEntry& entry)
{
    entry.sequence = state_->sequence + 1;
    auto [sector, body] = state_->encode(entry, header_);
    const std::uint64_t offset = slot_offset(entry.sequence, header_.slot_size);

    // The body first, then the header sector that makes the entry current: a crash before the header
    // is durable leaves the previous entry current and this slot's older header with a stale body.
    state_->file.write_exact(offset + entry_header_size, body);
    state_->file.sync_data();
    fault_point("journal-body-written");
    state_->file.write_exact(offset, sector);
    state_->file.sync_data();
    state_->sequence = entry.sequence;
}

void Journal::remove()
{
    state_->file = File();
    if (::unlink(state_->path.c_str()) != 0 && errno != ENOENT)
        throw IoError(state_->path.string() + ": cannot delete the journal: " + std::strerror(errno));
    sync_directory(state_->path.parent_path());
}

}  // namespace vmcrypt
