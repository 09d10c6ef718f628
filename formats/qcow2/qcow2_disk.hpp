#pragma once
// A qcow2 image opened for inspection or in-place rewriting.
//
// Opening parses and validates the header, the extensions, the active L1/L2 tables and, for a
// read-write open, the refcounts against every reference, so that later steps work on checked values.
// A read-write open takes QEMU's image lock first and then rejects what vmcrypt must not rewrite: the
// dirty or corrupt bit, internal snapshots, unknown incompatible features and an external data file.
// vmcrypt's encryption record lives in header extension 0x766d6372 as "key=value" lines, or, with
// 512-byte clusters, in sectors 2 to 7 of the LUKS area that extension 0x766d7270 points at.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"
#include "core/io/file.hpp"
#include "formats/qcow2/cluster_map.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/refcounts.hpp"
#include "formats/qcow2/snapshots.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace vmcrypt::qcow2 {

class QcowDisk final : public Disk {
public:
    // Opens the image in `file` (opened from `path` with the access the caller needs). Throws
    // InvalidInput or UnsupportedInput naming the file and field, DiskInUse when QEMU holds the image.
    static std::unique_ptr<QcowDisk> open(File file, const std::filesystem::path& path);

    std::string format() const override { return "qcow2"; }
    std::string subformat() const override { return header_.version == 2 ? "v2 (compat=0.10)" : "v3 (compat=1.1)"; }
    std::uint64_t capacity() const override { return header_.size; }
    std::vector<File*> files() override { return {file_.get()}; }
    std::vector<DataRun> data_runs() const override { return map_.runs; }
    // QEMU's rules: the XTS tweak of a LUKS unit is its host offset / 512 ("host-sector"); the CBC IV of
    // a legacy qcow AES sector is its guest offset / 512 ("guest-sector"), also while vmcrypt decrypts it.
    std::string tweak_rule() const override;
    // QEMU decrypts every allocated unit, zeros included.
    std::string zero_unit_rule() const override { return "encrypted"; }
    // QEMU writes the image it opens with the secret.
    bool data_changes_while_encrypted() const override { return true; }
    std::optional<RecordFields> record() const override { return record_; }
    MetadataWrite record_update(const std::optional<RecordFields>& fields) const override;
    void apply(const MetadataWrite& update) override;
    DiskRelations relations() const override;
    std::optional<std::string> foreign_encryption() const override;
    std::vector<ExtentInfo> extents() const override;
    void prepare_encrypt(const SecureBytes& dek, const RecordFields& record) override;
    void prepare_rekey(const SecureBytes& new_dek, const RecordFields& record) override;
    std::uint64_t prepare_encrypt_bytes() const override;
    std::uint64_t prepare_rekey_bytes() const override;
    std::optional<SecureBytes> unlock_foreign(const SecureBytes* passphrase) override;
    std::string foreign_cipher() const override;
    bool foreign_adoptable() const override;
    std::optional<MergeInProgress> merge_in_progress() const override;
    void prepare_adopt(const SecureBytes& dek, const RecordFields& record) override;
    bool can_unlock_foreign() const override;

    const Header& header() const { return header_; }
    const ClusterMap& cluster_map() const { return map_; }
    const std::vector<Snapshot>& snapshots() const { return snapshots_; }
    // True when every cluster's use is known, so refcounts above the reference count are leaks.
    bool references_complete() const;

private:
    QcowDisk() = default;
    void load(bool check_state);
    void load_record();
    void load_record_from_luks_area(const HeaderExtension& pointer);
    // Guest numbering for a legacy qcow AES image and for one that vmcrypt is decrypting from it.
    SectorNumbering sector_numbering() const;
    // Walks the tables into map_ and counts every reference to each host cluster (read-write opens).
    ClusterReferences count_references();
    void check_refcounts(const ClusterReferences& references) const;
    void repair_leaks();
    // The (cluster, refcount) pairs that repair_leaks() sets for `references`.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> find_leak_repairs(const ClusterReferences& references) const;
    // The bytes prepare_encrypt() (`decompress`) or prepare_rekey() adds to the file, from a dry run of
    // their allocations. nullopt when the refcount table would grow, because the dry run does not model
    // that, or when the refcounts are too large to copy.
    std::optional<std::uint64_t> planned_growth(std::uint64_t area_clusters, bool decompress) const;
    // An upper bound of what `allocations` calls of Refcounts::allocate() for `clusters` clusters in all
    // add to the file, in bytes.
    std::uint64_t allocation_bound(std::uint64_t clusters, std::uint64_t allocations) const;
    void decompress_clusters();
    CryptoHeaderPointer write_luks_area(const std::vector<std::uint8_t>& area);
    Header header_for(const std::optional<RecordFields>& fields) const;
    // The qemu-img command line for `subcommand` ("check -r all") on this image, then `output` (a
    // convert's target, if any), with the secret options and how to get the secret when the image is
    // LUKS-encrypted.
    std::string qemu_img_command(const std::string& subcommand, const std::string& output = "") const;
    // True when the record `fields` goes into the LUKS area (see luks_record_offset) instead of cluster 0.
    bool record_in_luks_area(const RecordFields& fields) const;
    // The header bytes record_update() and apply() write for `fields`, padded to whole sectors.
    std::vector<std::uint8_t> header_bytes_for(const std::optional<RecordFields>& fields) const;
    MetadataWrite record_update_in_luks_area(const RecordFields& fields) const;
    void apply_record_in_luks_area(const MetadataWrite& update);
    // Writes and syncs the header sectors of cluster 0, releasing an area the new header stops naming.
    void write_header(const std::vector<std::uint8_t>& bytes);

    std::filesystem::path path_;
    std::string name_;
    std::unique_ptr<File> file_;
    Header header_;
    ClusterMap map_;
    std::vector<Snapshot> snapshots_;
    std::optional<Refcounts> refcounts_;  // loaded for read-write opens
    std::vector<std::pair<std::uint64_t, std::uint64_t>> leak_repairs_;  // what repair_leaks() would set
    std::optional<RecordFields> record_;
    std::optional<CryptoHeaderPointer> prepared_area_;  // LUKS area allocated by an encrypt, not yet in the header
    // The LUKS area for the new DEK of a deep rekey: written by prepare_rekey(), or named by the header's
    // extension 0x766d636e while the rekey runs. The final header moves it into the crypto extension.
    std::optional<CryptoHeaderPointer> next_area_;
};

// Reads the first cluster of a file that starts with the qcow2 magic (at most 2 MiB).
std::vector<std::uint8_t> read_cluster0(const File& file);

}  // namespace vmcrypt::qcow2
