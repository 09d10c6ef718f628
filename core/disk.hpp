#pragma once
// The format boundary: what a disk format gives the rewrite engine and the CLI.
//
// A format (formats/vmdk, later formats/qcow2) parses and validates all of its metadata when the disk is
// opened, so that every later step works on checked values. core/ knows no format; it only sees DataRun
// lists, the encryption record as key/value fields, and byte-exact metadata writes it can journal.

#include "core/crypto/secure.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace vmcrypt {

// A contiguous byte range of one file that contains guest data and nothing else.
struct DataRun {
    std::size_t file_index = 0;       // index into Disk::files()
    std::uint64_t host_offset = 0;    // bytes, a multiple of 512
    std::uint64_t length = 0;         // bytes, a multiple of 512
    std::uint64_t first_sector = 0;   // XTS tweak (sector number) of the run's first 512-byte unit

    bool operator==(const DataRun&) const = default;
};

// The encryption record as ordered key/value pairs, without any format prefix ("cipher", "keySlot.0", ...).
// Keys are [A-Za-z0-9.]+ and values printable ASCII without '"', so every format can store them as text.
using RecordFields = std::vector<std::pair<std::string, std::string>>;

// A byte-exact metadata update that the engine journals before applying, so it can be redone after a crash.
struct MetadataWrite {
    std::size_t file_index = 0;
    std::uint64_t offset = 0;
    std::vector<std::uint8_t> bytes;
    std::optional<std::uint64_t> truncate_to;  // set for a separate descriptor file that shrinks
};

struct ExtentInfo {
    std::string file;                 // as the descriptor names it; empty for a ZERO extent
    std::string type;                 // SPARSE, FLAT, VMFS, ZERO, ...
    std::string access;               // RW, RDONLY, NOACCESS
    std::uint64_t guest_offset = 0;   // bytes
    std::uint64_t size = 0;           // guest bytes covered
    std::uint64_t file_size = 0;      // bytes of the extent file on the host
    std::uint64_t allocated = 0;      // bytes of guest data actually stored (allocated grains, data regions)
};

struct DiskRelations {
    std::vector<std::string> parents;   // parent files this disk reads through (backing chain)
    std::vector<std::string> children;  // files in the same folder that name this disk as their parent
};

class Disk {
public:
    virtual ~Disk() = default;

    virtual std::string format() const = 0;     // "vmdk"
    virtual std::string subformat() const = 0;  // the VMDK createType
    virtual std::uint64_t capacity() const = 0; // guest bytes

    // Every file of the disk, the metadata (descriptor) file first, each file opened once.
    virtual std::vector<File*> files() = 0;

    // Guest data ranges, in guest order, merged where host and guest are both contiguous. Excludes all
    // metadata, unallocated and zeroed grains, ZERO extents and host holes in flat extents.
    virtual std::vector<DataRun> data_runs() const = 0;

    // Name of the tweak rule recorded in the record: "guest-sector" for VMDK.
    virtual std::string tweak_rule() const = 0;

    // How all-zero 512-byte units are stored, recorded as zeroUnits: "plain" (stored as zeros, so thin
    // disks stay thin) or "encrypted" (encrypted like any other unit, as a qcow2 LUKS reader expects).
    virtual std::string zero_unit_rule() const { return "plain"; }

    // True when other programs rewrite the encrypted data by design (QEMU writes a LUKS qcow2 that it
    // opens with the secret). The record then carries no dataCheck, because a check over ciphertext would
    // reject the image after the first guest write. Such a record lives inside the image file itself, so
    // it is not copied onto another disk with a descriptor.
    virtual bool data_changes_while_encrypted() const { return false; }

    // vmcrypt's record fields, or nullopt when the disk has none (plaintext).
    virtual std::optional<RecordFields> record() const = 0;

    // The write that would store `fields` (or remove the record when nullopt). Throws InvalidInput when
    // it does not fit (an embedded descriptor that would outgrow its reserved sectors).
    virtual MetadataWrite record_update(const std::optional<RecordFields>& fields) const = 0;

    // Writes and syncs an update from record_update() (or one replayed from the journal), then re-reads
    // the metadata so record() reflects it. The disk must be open read-write.
    virtual void apply(const MetadataWrite& update) = 0;

    virtual DiskRelations relations() const = 0;

    // A description of encryption by another product (VMware's encryptionKeys= or vmwarevmcrypt I/O
    // filter), or nullopt. Such a disk is never treated as plaintext.
    virtual std::optional<std::string> foreign_encryption() const = 0;

    virtual std::vector<ExtentInfo> extents() const = 0;

    // Unlocks another product's encryption that vmcrypt can decrypt (a QEMU LUKS qcow2) and returns its
    // data key, or nullopt when the disk has no such encryption. Throws KeyUnavailable when `passphrase`
    // is null and WrongKey when it does not open the disk. The default has none.
    virtual std::optional<SecureBytes> unlock_foreign(const SecureBytes* passphrase)
    {
        (void)passphrase;
        return std::nullopt;
    }

    // True when unlock_foreign() can open the disk's foreign encryption with a passphrase.
    virtual bool can_unlock_foreign() const { return false; }

    // The cipher (a record cipher name) of the data key that unlock_foreign() returns.
    virtual std::string foreign_cipher() const { return "aes-xts-plain64"; }

    // Structural changes an encrypt needs before its journal exists (qcow2: decompress compressed
    // clusters, allocate and write the LUKS header area). `record` is the in-progress record, so the
    // disk can check that its final form fits before it writes. Each change must leave a valid
    // plaintext disk with the same guest data, whatever the moment of a crash. Afterwards data_runs()
    // and record_update() reflect the changes. The default has nothing to prepare.
    virtual void prepare_encrypt(const SecureBytes& dek, const RecordFields& record)
    {
        (void)dek;
        (void)record;
    }

    // Upper bounds of the bytes that prepare_encrypt() and prepare_rekey() allocate in files()[0], which
    // the caller checks against the free space before the first write. The defaults prepare nothing.
    virtual std::uint64_t prepare_encrypt_bytes() const { return 0; }
    virtual std::uint64_t prepare_rekey_bytes() const { return 0; }

    // Copies of the DEK that the format keeps in its own metadata and that a deep rekey must replace
    // (qcow2: the LUKS header area, whose master key is the DEK). Called before the journal exists, after
    // every check, with the new DEK and the in-progress (rekeying) record. The disk checks that its
    // rekeying and final metadata fit, then writes the new copies where nothing refers to them yet, so a
    // crash at any moment leaves the disk as it was (at worst with leaked space). Afterwards
    // record_update() for the rekeying state names the new copies next to the old ones, and the final
    // (encrypted) update switches to them, so they take effect in the engine's journaled final write.
    // The default has nothing to prepare.
    virtual void prepare_rekey(const SecureBytes& new_dek, const RecordFields& record)
    {
        (void)new_dek;
        (void)record;
    }

    // True when vmcrypt can give the disk's foreign encryption its own key slots (keys add), after
    // unlock_foreign() opened it with a passphrase: a QEMU LUKS qcow2.
    virtual bool foreign_adoptable() const { return false; }

    // Prepares foreign encryption that unlock_foreign() opened to `dek` for vmcrypt's record `record`
    // (state encrypted), which the caller writes next through the key-change journal. The disk checks
    // that the record fits before it writes anything. The foreign product's own keys keep working, and a
    // crash at any moment leaves them working. qcow2 adds a LUKS key slot for the secret that vmcrypt
    // derives from the DEK. The default rejects adoption.
    virtual void prepare_adopt(const SecureBytes& dek, const RecordFields& record)
    {
        (void)dek;
        (void)record;
        throw UnsupportedInput(format() + " disk: vmcrypt cannot add key slots to its foreign encryption");
    }

    // An unfinished consolidate-snapshots merge that the disk takes part in, as the format records it
    // (qcow2: an intent file that may sit next to another image of the chain), with the image to give
    // consolidate-snapshots to finish it. The default finds none: the engine looks for a VMDK merge's
    // intent file next to the disk itself.
    struct MergeInProgress {
        std::filesystem::path intent;
        std::string resume_disk;
    };
    virtual std::optional<MergeInProgress> merge_in_progress() const { return std::nullopt; }
};

}  // namespace vmcrypt
