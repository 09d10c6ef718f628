// vmcrypt's record in the qcow2 header, and the header writes that carry an operation's state.
//
// The header says what state the image is in, for QEMU and for vmcrypt alike:
//   plaintext:    crypt_method 0, no crypto extension, no vmcrypt extension;
//   in progress:  crypt_method 0x766d6370 (vmcrypt's guard, which QEMU and libqcow reject), the crypto
//                 extension naming the LUKS area, and the vmcrypt extension with state encrypting or
//                 decrypting;
//   encrypted:    crypt_method 2 (LUKS), the crypto extension, the vmcrypt extension (state encrypted).
// A decrypt of a legacy qcow AES image (crypt_method 1) goes through the in-progress state without a
// crypto extension, its record naming cipher aes-cbc-plain64.
// Each state change is one header write that the rewrite engine journals first, so a crash in the
// middle of it is redone on resume. With 512-byte clusters the record is in the LUKS area instead, and
// a state change is the journaled record write, which apply() turns into the header write and then
// the record write.

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/record/encryption_record.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/legacy_aes.hpp"
#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/luks_area.hpp"
#include "formats/qcow2/qcow2_disk.hpp"

#include <algorithm>

namespace vmcrypt::qcow2 {

namespace {

void erase_extension(Header& header, std::uint32_t type)
{
    std::erase_if(header.extensions, [type](const HeaderExtension& extension) { return extension.type == type; });
}

std::string field_value(const RecordFields& fields, const std::string& name)
{
    for (const auto& [key, value] : fields)
        if (key == name)
            return value;
    return {};
}

}  // namespace

Header QcowDisk::header_for(const std::optional<RecordFields>& fields) const
{
    Header next = header_;
    // A writer that does not know an autoclear feature must clear its bit (docs/interop/qcow2.txt).
    next.autoclear_features &= autoclear_bitmaps | autoclear_raw_data;
    erase_extension(next, ext_vmcrypt);
    erase_extension(next, ext_vmcrypt_next_luks);
    erase_extension(next, ext_vmcrypt_record_pointer);
    if (!fields) {
        next.crypt_method = static_cast<std::uint32_t>(CryptMethod::none);
        erase_extension(next, ext_crypto);
        return next;
    }

    const bool encrypted = field_value(*fields, "state") == "encrypted";
    next.crypt_method = static_cast<std::uint32_t>(encrypted ? CryptMethod::luks : CryptMethod::vmcrypt_in_progress);
    // A legacy qcow AES image has no LUKS area, and its decrypt never creates one.
    const bool legacy_decrypt = field_value(*fields, "cipher") == legacy_record_cipher;
    if (!legacy_decrypt && !next.find_extension(ext_crypto)) {
        // A resumed encrypt computes its final record before the journaled start write names the area.
        // That header is only measured and is built again once the area is known. Its placeholder
        // pointer to offset 0 can never be written, because apply() parses it and rejects offset 0.
        CryptoHeaderPointer area = prepared_area_.value_or(CryptoHeaderPointer{0, luks_area_size()});
        HeaderExtension crypto;
        crypto.type = ext_crypto;
        crypto.data.resize(16);
        store_be64(crypto.data, 0, area.offset);
        store_be64(crypto.data, 8, area.length);
        next.extensions.push_back(std::move(crypto));
    }
    if (next_area_) {
        // A deep rekey: while it runs the header names the new area next to the old one, which still
        // opens the data not yet rewritten. The final header names only the new area.
        HeaderExtension pointer;
        pointer.data.resize(16);
        store_be64(pointer.data, 0, next_area_->offset);
        store_be64(pointer.data, 8, next_area_->length);
        if (encrypted) {
            pointer.type = ext_crypto;
            for (HeaderExtension& extension : next.extensions)
                if (extension.type == ext_crypto)
                    extension = pointer;
        } else {
            pointer.type = ext_vmcrypt_next_luks;
            next.extensions.push_back(std::move(pointer));
        }
    }
    HeaderExtension record;
    if (record_in_luks_area(*fields)) {
        record.type = ext_vmcrypt_record_pointer;
        record.data.resize(16);
        store_be64(record.data, 0, next.crypto_header().value_or(CryptoHeaderPointer{}).offset + luks_record_offset);
        store_be64(record.data, 8, luks_record_capacity);
    } else {
        record.type = ext_vmcrypt;
        std::string text = fields_to_text(*fields);
        record.data.assign(text.begin(), text.end());
    }
    next.extensions.push_back(std::move(record));
    return next;
}

bool QcowDisk::record_in_luks_area(const RecordFields& fields) const
{
    // With 512-byte clusters the header, the crypto extension and a record of even one key slot
    // (435 bytes with a key store slot) exceed cluster 0. A legacy AES decrypt has no LUKS area and stays in cluster 0.
    return header_.cluster_bits == min_cluster_bits && field_value(fields, "cipher") != legacy_record_cipher;
}

std::vector<std::uint8_t> QcowDisk::header_bytes_for(const std::optional<RecordFields>& fields) const
{
    std::vector<std::uint8_t> bytes;
    try {
        bytes = serialize_header(header_for(fields), name_);
    } catch (const InvalidInput& e) {
        throw InvalidInput(std::string(e.what()) + "; the vmcrypt record does not fit next to the header. Use fewer "
                           "key slots, or convert to larger clusters: qemu-img convert -O qcow2 -o cluster_size=65536 " +
                           name_ + " new.qcow2");
    }
    // Cover the old header area too, so that no stale extension bytes stay behind the end marker.
    std::uint64_t length = std::max<std::uint64_t>(bytes.size(), header_.header_area_end);
    length = std::min<std::uint64_t>((length + 511) / 512 * 512, header_.cluster_size());
    bytes.resize(length, 0);
    return bytes;
}

MetadataWrite QcowDisk::record_update(const std::optional<RecordFields>& fields) const
{
    if (fields && record_in_luks_area(*fields))
        return record_update_in_luks_area(*fields);
    MetadataWrite write;
    write.file_index = 0;
    write.offset = 0;
    write.bytes = header_bytes_for(fields);
    return write;
}

MetadataWrite QcowDisk::record_update_in_luks_area(const RecordFields& fields) const
{
    header_bytes_for(fields);  // rejects a header that does not fit in cluster 0
    const std::string text = fields_to_text(fields);
    if (text.size() > luks_record_capacity)
        throw InvalidInput(name_ + ": the vmcrypt record is " + std::to_string(text.size()) + " bytes but the LUKS area "
                           "of an image with 512-byte clusters keeps at most " + std::to_string(luks_record_capacity) +
                           "; use fewer key slots, or convert to larger clusters: qemu-img convert -O qcow2 -o "
                           "cluster_size=65536 " + name_ + " new.qcow2");

    // An area that is on disk already (QEMU's, or the one of an encrypted image) must leave the record
    // sectors free. vmcrypt's own areas always do.
    const CryptoHeaderPointer area = header_for(fields).crypto_header().value_or(CryptoHeaderPointer{});
    const bool written = header_.crypto_header() && header_.crypto_header()->offset == area.offset;
    if (written) {
        std::vector<std::uint8_t> phdr(luks_record_offset + luks_record_capacity);
        if (!file_->read_exact(area.offset, phdr) || !luks_area_has_record_room(phdr))
            throw UnsupportedInput(name_ + ": the LUKS header at " + hex(area.offset) + " leaves no room for the vmcrypt "
                                   "record in sectors 2 to 7 (a key slot starts there), and cluster 0 of an image with "
                                   "512-byte clusters has none either; convert to larger clusters: qemu-img convert "
                                   "-O qcow2 -o cluster_size=65536 " + name_ + " new.qcow2");
    }

    MetadataWrite write;
    write.file_index = 0;
    write.offset = area.offset + luks_record_offset;
    write.bytes.assign(text.begin(), text.end());
    write.bytes.resize(luks_record_capacity, 0);
    return write;
}

void QcowDisk::apply(const MetadataWrite& update)
{
    File& file = *file_;
    if (file.access() != Access::read_write)
        throw Error(ExitCode::failure, name_ + ": apply: the image is open read-only, so its header cannot be written");
    if (update.file_index == 0 && update.offset != 0 && !update.truncate_to &&
        update.bytes.size() == luks_record_capacity) {
        apply_record_in_luks_area(update);
        return;
    }
    if (update.file_index != 0 || update.offset != 0 || update.truncate_to || update.bytes.size() > header_.cluster_size())
        throw Error(ExitCode::failure, name_ + ": apply: the metadata write does not cover the header in cluster 0 "
                                               "(file " + std::to_string(update.file_index) + ", offset " +
                                               std::to_string(update.offset) + ", " +
                                               std::to_string(update.bytes.size()) + " bytes)");
    write_header(update.bytes);
    prepared_area_.reset();
    load(false);
}

void QcowDisk::apply_record_in_luks_area(const MetadataWrite& update)
{
    File& file = *file_;
    // The area the record belongs to. It is the one the header names, the next one of a deep rekey, or
    // the one this encrypt prepared. When a resumed encrypt replays its start write, it is a vmcrypt
    // area that prepare_encrypt wrote and no header names yet.
    const CryptoHeaderPointer area{update.offset - std::min(update.offset, luks_record_offset), luks_area_size()};
    auto names_area = [&](const std::optional<CryptoHeaderPointer>& known) {
        return known && known->offset == area.offset;
    };
    if (!names_area(header_.crypto_header()) && !names_area(next_area_) && !names_area(prepared_area_)) {
        std::vector<std::uint8_t> phdr(luks_record_offset + luks_record_capacity);
        const bool allocated = refcounts_ && area.offset != 0 && area.offset % header_.cluster_size() == 0 &&
                               refcounts_->get(area.offset >> header_.cluster_bits) > 0;
        if (!allocated || !file.read_exact(area.offset, phdr) || !luks_area_has_record_room(phdr))
            throw Error(ExitCode::failure, name_ + ": apply: the record write at " + hex(update.offset) +
                                                   " is not inside a LUKS area of the image");
        prepared_area_ = area;
    }

    const auto text_end = std::find(update.bytes.begin(), update.bytes.end(), std::uint8_t{0});
    const RecordFields fields = fields_from_text(std::string(update.bytes.begin(), text_end));
    if (!record_in_luks_area(fields))
        throw Error(ExitCode::failure, name_ + ": apply: a record write into the LUKS area of an image whose record "
                                               "belongs in cluster 0");
    const std::vector<std::uint8_t> header = header_bytes_for(fields);

    // The header first, then the record. A crash in between leaves a header that names record sectors
    // with the previous record, or with none, which fails to parse so the journal replays this write.
    // The record sectors match this write only once the header is on disk, so a resume that finds the
    // record written can rely on the header being written too.
    write_header(header);
    fault_point("qcow2-record-header-written");
    file.write_exact(update.offset, update.bytes);
    file.sync_data();
    prepared_area_.reset();
    load(false);
}

void QcowDisk::write_header(const std::vector<std::uint8_t>& bytes)
{
    File& file = *file_;
    // Reject a header that would not parse before touching the file.
    Header next = parse_header(bytes, file.size(), name_);

    std::optional<CryptoHeaderPointer> area = header_.crypto_header();
    std::optional<CryptoHeaderPointer> next_area = next.crypto_header();
    const bool area_dropped = area && (!next_area || next_area->offset != area->offset);
    if (area_dropped && refcounts_ &&
        static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::vmcrypt_in_progress) {
        // The last step of a decrypt, or of a deep rekey that replaces the area. The guard still blocks
        // every other program, and no data is under the old area's key any more, so the area may be
        // released before the header stops naming it. After a crash in between, the journal replays
        // this write, and nothing leaks.
        const std::uint64_t first = area->offset >> header_.cluster_bits;
        const std::uint64_t count = (area->length + header_.cluster_size() - 1) >> header_.cluster_bits;
        if (refcounts_->get(first) != 0)
            refcounts_->set_range(file, first, count, 0);
        fault_point("qcow2-luks-area-released");
    }

    if (static_cast<CryptMethod>(next.crypt_method) == CryptMethod::vmcrypt_in_progress && file.size() < map_.data_end) {
        // The engine rewrites whole clusters, so the zeros QEMU reads past the end of the file must
        // exist as bytes. Extending the file adds a hole and changes nothing QEMU reads.
        file.truncate(map_.data_end);
    }
    file.write_exact(0, bytes);
    file.sync_data();
}

bool QcowDisk::can_unlock_foreign() const
{
    const auto method = static_cast<CryptMethod>(header_.crypt_method);
    return method == CryptMethod::aes || (method == CryptMethod::luks && !record_);
}

std::string QcowDisk::foreign_cipher() const
{
    return static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::aes ? legacy_record_cipher : record_cipher;
}

std::optional<SecureBytes> QcowDisk::unlock_foreign(const SecureBytes* passphrase)
{
    if (static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::aes) {
        if (!passphrase)
            throw KeyUnavailable(name_ + ": the image is encrypted with legacy qcow AES (crypt_method 1); give its "
                                         "password with --passphrase-file, --passphrase-fd or --passphrase to decrypt it");
        return unlock_legacy_aes(*file_, map_, *passphrase, name_);
    }
    std::optional<CryptoHeaderPointer> pointer = header_.crypto_header();
    if (static_cast<CryptMethod>(header_.crypt_method) != CryptMethod::luks || record_ || !pointer)
        return std::nullopt;

    std::vector<std::uint8_t> area(static_cast<std::size_t>(pointer->length));
    if (!file_->read_exact(pointer->offset, area))
        throw InvalidInput(name_ + ": LUKS header area at " + hex(pointer->offset) + " is past the end of the file");
    const std::string where = name_ + ": LUKS header";
    LuksHeader luks = parse_luks_header(area, where);
    if (!passphrase)
        throw KeyUnavailable(name_ + ": the image is encrypted by QEMU with LUKS; give its passphrase with "
                                     "--passphrase-file, --passphrase-fd or --passphrase");
    return unlock_luks(luks, area, *passphrase, where);
}

}  // namespace vmcrypt::qcow2
