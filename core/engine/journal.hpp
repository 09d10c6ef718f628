#pragma once
// The crash journal of an unfinished operation: "<metadata file>.vmcrypt-journal", next to the disk's
// descriptor, present exactly while an operation is unfinished.
//
// Layout: an 8 KiB header written once (through a temporary file and rename), then two entry slots; entry
// N lives in slot N % 2. An entry is a body (metadata bytes, unit hashes) and a 512-byte header sector
// carrying the sequence number, an HMAC-SHA-256 of the body and an HMAC of the header, keyed from the DEK.
// append() syncs the body before it writes the header sector, and a sector write is atomic, so a crash
// leaves the previous entry current. Damage found later (a failing header or newest body) is reported,
// never skipped, because skipping the newest entry could rewrite a finished window twice. The MACs also
// cover a random journal id, so entries cannot be moved between journals.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

namespace vmcrypt {

// rekey: a deep rekey (data rewritten from the previous DEK to a new one). key_change: a change of the
// key slots alone (shallow rekey, slot added or removed), whose journal carries one metadata write.
enum class Operation : std::uint32_t { encrypt = 1, decrypt = 2, rekey = 3, key_change = 4 };

std::string to_string(Operation operation);

enum class JournalPhase : std::uint32_t {
    metadata = 1,  // the start metadata write is pending; no data has been rewritten
    window = 2,    // one window is being rewritten; windows before it are done
    finalize = 3,  // all data is done; the final metadata write is pending
};

// The phase as inspect and the logs name it: "starting", "rewriting" or "finishing".
std::string to_string(JournalPhase phase);

struct JournalHeader {
    Operation operation = Operation::encrypt;
    std::uint64_t window_size = 0;
    std::uint64_t total_bytes = 0;
    std::array<std::uint8_t, 32> layout_digest{};
    RecordFields record;  // the record whose key slots unlock the DEK, for a resume
    std::uint64_t slot_size = 0;
    std::array<std::uint8_t, 16> journal_id{};
};

struct JournalEntry {
    std::uint64_t sequence = 0;
    JournalPhase phase = JournalPhase::metadata;
    std::uint64_t window_start = 0;   // stream position (bytes)
    std::uint64_t window_length = 0;
    std::vector<std::uint64_t> unit_hashes;  // unit_hash of each 512-byte unit's old content
    std::optional<MetadataWrite> metadata;   // for the metadata and finalize phases
};

// The unauthenticated view inspect reads without a key: the header and the newest well-formed entry.
struct JournalSummary {
    JournalHeader header;
    std::optional<JournalEntry> newest;
    // Why the journal cannot be resumed, seen without the key: a file shorter than create() makes it,
    // or no well-formed entry header. Empty when neither was found; the MACs are checked only on resume.
    std::string damage;
};

class Journal {
public:
    static std::filesystem::path path_for(const std::filesystem::path& metadata_file);

    // Reads the journal without a key, for inspect and to find the record to unlock. nullopt when there is
    // no journal file. Throws InvalidInput when the file is not a vmcrypt journal.
    static std::optional<JournalSummary> peek(const std::filesystem::path& path);

    // Creates the journal durably with its first entry (atomic: temporary file, fsync, rename, fsync of
    // the folder). max_metadata_bytes bounds every metadata write the entries will carry.
    static Journal create(const std::filesystem::path& path, JournalHeader header, const JournalEntry& first,
                          std::size_t max_metadata_bytes, const SecureBytes& dek);

    // The size of the journal file that create() makes for this window size and metadata bound; the
    // journal never takes more space.
    static std::uint64_t file_size(std::uint64_t window_size, std::size_t max_metadata_bytes);

    // Opens an existing journal and verifies the header MAC; throws InvalidInput on forgery or damage.
    static Journal open(const std::filesystem::path& path, const SecureBytes& dek);

    const JournalHeader& header() const { return header_; }

    // The newest entry; later appends continue from its sequence number. Throws InvalidInput when the
    // journal is damaged in a way a crash cannot explain.
    JournalEntry newest() const;

    // Returns the window entry just before the newest one, whose window may not be synced yet, because
    // the engine journals a window while the one before it is still being written. Call after newest(). No value
    // when that entry is not a window entry, or when its body was overwritten by an unfinished append,
    // which the engine starts only after that window is synced.
    std::optional<JournalEntry> window_before_newest() const;

    // Writes the entry into the older slot and syncs it (fdatasync). entry.sequence is set here.
    void append(JournalEntry& entry);

    // Deletes the journal and syncs the folder: the operation is complete.
    void remove();

    Journal(Journal&&) noexcept;
    Journal& operator=(Journal&&) noexcept;
    ~Journal();

private:
    Journal();
    struct State;
    std::unique_ptr<State> state_;
    JournalHeader header_;
};

}  // namespace vmcrypt
