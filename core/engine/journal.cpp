#include "core/engine/journal.hpp"

#include "core/crypto/kdf.hpp"
#include "core/crypto/mac.hpp"
#include "core/crypto/random.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/record/encryption_record.hpp"

#include <cstring>
#include <unistd.h>

namespace vmcrypt {

namespace {

constexpr std::uint64_t header_area = 8192;
constexpr std::uint32_t journal_version = 1;
// The unit hash the entries were made with; recovery must compare with the same function.
constexpr std::uint32_t unit_hash_xxh3_64 = 1;
constexpr char header_magic[8] = {'V', 'M', 'C', 'R', 'Y', 'P', 'T', 'J'};
constexpr char entry_magic[8] = {'V', 'M', 'C', 'J', 'E', 'N', 'T', '1'};
constexpr std::string_view mac_label = "vmcrypt journal mac v1";
constexpr std::size_t entry_fixed_bytes = 8 + 8 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 8;
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
    if (r.u32() != journal_version)
        throw UnsupportedInput("journal version is not 1");

    JournalHeader header;
    std::uint32_t operation = r.u32();
    if (operation != 1 && operation != 2)
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

std::vector<std::uint8_t> encode_entry(const JournalEntry& entry)
{
    Writer w;
    w.raw(entry_magic, 8);
    w.u64(entry.sequence);
    w.u32(static_cast<std::uint32_t>(entry.phase));
    w.u32(0);
    w.u64(entry.window_start);
    w.u64(entry.window_length);
    w.u64(entry.unit_hashes.size());
    if (entry.metadata) {
        const MetadataWrite& m = *entry.metadata;
        w.u64(m.bytes.size());
        w.u64(m.file_index);
        w.u64(m.offset);
        w.u64(m.truncate_to ? 1 : 0);
        w.u64(m.truncate_to.value_or(0));
        w.raw(m.bytes.data(), m.bytes.size());
    } else {
        for (int i = 0; i < 5; ++i)
            w.u64(0);
    }
    for (std::uint64_t hash : entry.unit_hashes)
        w.u64(hash);
    return w.bytes;
}

JournalEntry decode_entry(const std::uint8_t* data, std::size_t size, std::size_t& encoded_length)
{
    Reader r(data, size);
    char magic[8];
    r.raw(magic, 8);
    if (std::memcmp(magic, entry_magic, 8) != 0)
        throw InvalidInput("bad entry magic");

    JournalEntry entry;
    entry.sequence = r.u64();
    std::uint32_t phase = r.u32();
    if (phase < 1 || phase > 3)
        throw InvalidInput("unknown phase");
    entry.phase = static_cast<JournalPhase>(phase);
    r.u32();
    entry.window_start = r.u64();
    entry.window_length = r.u64();
    std::uint64_t unit_count = r.u64();
    std::uint64_t metadata_length = r.u64();
    if (unit_count > size / 8 || metadata_length > size)
        throw InvalidInput("entry sizes are invalid");

    MetadataWrite metadata;
    metadata.file_index = r.u64();
    metadata.offset = r.u64();
    bool truncate = r.u64() != 0;
    std::uint64_t truncate_to = r.u64();
    if (entry.phase != JournalPhase::window) {
        metadata.bytes.resize(metadata_length);
        r.raw(metadata.bytes.data(), metadata.bytes.size());
        if (truncate)
            metadata.truncate_to = truncate_to;
        entry.metadata = std::move(metadata);
    }
    entry.unit_hashes.resize(unit_count);
    for (std::uint64_t& hash : entry.unit_hashes)
        hash = r.u64();
    encoded_length = r.position();
    return entry;
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

}  // namespace

std::string to_string(Operation operation)
{
    return operation == Operation::encrypt ? "encrypt" : "decrypt";
}

struct Journal::State {
    std::filesystem::path path;
    File file;
    SecureBytes mac_key;
    std::uint64_t sequence = 0;  // of the newest entry written or found

    Mac entry_mac(const std::vector<std::uint8_t>& encoded, const JournalHeader& header) const
    {
        std::vector<std::uint8_t> message(header.journal_id.begin(), header.journal_id.end());
        message.insert(message.end(), encoded.begin(), encoded.end());
        return hmac_sha256(mac_key, message);
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

    // The newest well-formed entry, without MAC verification.
    std::vector<std::uint8_t> slot(summary.header.slot_size);
    for (int index = 0; index < 2; ++index) {
        std::uint64_t offset = header_area + static_cast<std::uint64_t>(index) * summary.header.slot_size;
        std::size_t got = file.read_at(offset, slot);
        try {
            JournalEntry entry = decode_entry(slot.data(), got, length);
            if (!summary.newest || entry.sequence > summary.newest->sequence)
                summary.newest = std::move(entry);
        } catch (const std::exception&) {
            // A torn or never-written slot.
        }
    }
    return summary;
}

Journal Journal::create(const std::filesystem::path& path, JournalHeader header, const JournalEntry& first,
                        std::size_t max_metadata_bytes, const SecureBytes& dek)
{
    std::uint64_t units_per_window = header.window_size / 512;
    header.slot_size = round_up(entry_fixed_bytes + max_metadata_bytes + 8 * units_per_window + mac_size, 4096);
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
    std::vector<std::uint8_t> body = encode_entry(entry);
    Mac body_mac = journal.state_->entry_mac(body, header);
    body.insert(body.end(), body_mac.begin(), body_mac.end());
    if (body.size() > header.slot_size)
        throw InvalidInput(path.string() + ": journal entry does not fit its slot");

    // COMMIT POINT: the journal appears under its real name only once complete and durable.
    std::filesystem::path temporary = path;
    temporary += ".tmp";
    std::filesystem::remove(temporary);
    {
        File file = File::create_new(temporary, 0600);
        file.write_exact(0, head);
        file.write_exact(slot_offset(entry.sequence, header.slot_size), body);
        file.truncate(header_area + 2 * header.slot_size);
        file.sync_all();
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
    std::optional<JournalEntry> best;
    std::vector<std::uint8_t> slot(header_.slot_size);
    for (int index = 0; index < 2; ++index) {
        std::uint64_t offset = header_area + static_cast<std::uint64_t>(index) * header_.slot_size;
        std::size_t got = state_->file.read_at(offset, slot);
        std::size_t length = 0;
        JournalEntry entry;
        try {
            entry = decode_entry(slot.data(), got, length);
        } catch (const std::exception&) {
            continue;  // torn or never written
        }
        if (length + mac_size > got)
            continue;
        std::vector<std::uint8_t> encoded(slot.begin(), slot.begin() + static_cast<std::ptrdiff_t>(length));
        Mac expected = state_->entry_mac(encoded, header_);
        if (!equal_constant_time(expected, {slot.data() + length, mac_size}))
            continue;
        if (!best || entry.sequence > best->sequence)
            best = std::move(entry);
    }
    if (!best)
        throw InvalidInput(state_->path.string() + ": no journal entry passes its MAC check; the journal is damaged");
    state_->sequence = best->sequence;
    return *best;
}

void Journal::append(JournalEntry& entry)
{
    entry.sequence = state_->sequence + 1;
    std::vector<std::uint8_t> body = encode_entry(entry);
    Mac body_mac = state_->entry_mac(body, header_);
    body.insert(body.end(), body_mac.begin(), body_mac.end());
    if (body.size() > header_.slot_size)
        throw InvalidInput(state_->path.string() + ": journal entry does not fit its slot");

    state_->file.write_exact(slot_offset(entry.sequence, header_.slot_size), body);
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
