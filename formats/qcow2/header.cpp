#include "formats/qcow2/header.hpp"

#include "core/error.hpp"
#include "formats/qcow2/big_endian.hpp"

#include <algorithm>
#include <cstdio>

namespace vmcrypt::qcow2 {

namespace {

constexpr std::size_t feature_entry_size = 48;
constexpr std::uint64_t max_guest_size = 1ull << 61;  // keeps every cluster index computation in range

// Errors about one header field, each message starting "FILE: qcow2 header: FIELD ...".
struct FieldErrors {
    const std::string& where;

    InvalidInput invalid(const std::string& field, const std::string& problem) const
    {
        return InvalidInput(where + ": qcow2 header: " + field + " " + problem);
    }
    UnsupportedInput unsupported(const std::string& field, const std::string& problem) const
    {
        return UnsupportedInput(where + ": qcow2 header: " + field + " " + problem);
    }
};

std::uint64_t padded(std::uint64_t length)
{
    return (length + 7) & ~std::uint64_t{7};
}

// Checks a cluster-aligned table of `bytes` bytes at `offset` in the file.
void check_table(const FieldErrors& errors, const std::string& field, std::uint64_t offset, std::uint64_t bytes,
                 std::uint64_t cluster_size, std::uint64_t file_size)
{
    if (offset % cluster_size != 0)
        throw errors.invalid(field, hex(offset) + " is not a multiple of the cluster size " +
                                        std::to_string(cluster_size));
    if (offset == 0)
        throw errors.invalid(field, "is 0, which overlaps the header in cluster 0");
    if (offset > file_size || bytes > file_size - offset)
        throw errors.invalid(field, hex(offset) + " with " + std::to_string(bytes) +
                                        " bytes runs past the end of the file (" + std::to_string(file_size) +
                                        " bytes); the file is truncated");
}

void parse_extensions(Header& header, std::span<const std::uint8_t> cluster0, std::uint64_t start,
                      const FieldErrors& errors)
{
    // QEMU reads extensions up to the backing file name, or to the end of cluster 0.
    std::uint64_t end = header.backing_file_offset != 0 ? header.backing_file_offset : header.cluster_size();
    end = std::min<std::uint64_t>(end, cluster0.size());
    std::uint64_t offset = start;
    bool ended = false;
    while (offset < end) {
        if (end - offset < 8)
            throw errors.invalid("extension at byte " + std::to_string(offset),
                                 "is cut off by the end of cluster 0 (or of the file)");
        std::uint32_t type = load_be32(cluster0, offset);
        std::uint32_t length = load_be32(cluster0, offset + 4);
        if (type == ext_end) {
            offset += 8;
            ended = true;
            break;
        }
        if (length > end - offset - 8)
            throw errors.invalid("extension " + hex(type) + " at byte " + std::to_string(offset),
                                 "length " + std::to_string(length) + " runs past the end of cluster 0");
        HeaderExtension extension;
        extension.type = type;
        extension.data.assign(cluster0.begin() + offset + 8, cluster0.begin() + offset + 8 + length);
        for (const HeaderExtension& earlier : header.extensions)
            if (earlier.type == type && (type == ext_crypto || type == ext_vmcrypt || type == ext_vmcrypt_next_luks ||
                                         type == ext_vmcrypt_record_pointer || type == ext_data_file ||
                                         type == ext_backing_format || type == ext_bitmaps))
                throw errors.invalid("extension " + hex(type), "appears twice");
        header.extensions.push_back(std::move(extension));
        offset = std::min(end, offset + 8 + padded(length));
    }
    header.header_area_end = offset;
    if (!ended && offset < end)
        throw errors.invalid("extensions", "have no end marker");
}

void validate_crypto(const Header& header, std::uint64_t file_size, const FieldErrors& errors)
{
    const HeaderExtension* crypto = header.find_extension(ext_crypto);
    auto method = static_cast<CryptMethod>(header.crypt_method);
    if (crypto) {
        if (method != CryptMethod::luks && method != CryptMethod::vmcrypt_in_progress)
            throw errors.invalid("crypto extension (0x0537be77)",
                                 "is present but crypt_method is " + std::to_string(header.crypt_method) +
                                     "; QEMU expects it only with LUKS encryption (crypt_method 2)");
        if (crypto->data.size() != 16)
            throw errors.invalid("crypto extension (0x0537be77)",
                                 "is " + std::to_string(crypto->data.size()) + " bytes, expected 16");
        CryptoHeaderPointer pointer = *header.crypto_header();
        if (pointer.offset % header.cluster_size() != 0 || pointer.offset == 0)
            throw errors.invalid("crypto extension offset", hex(pointer.offset) +
                                                                " is not a non-zero multiple of the cluster size " +
                                                                std::to_string(header.cluster_size()));
        if (pointer.length == 0 || pointer.offset > file_size || pointer.length > file_size - pointer.offset)
            throw errors.invalid("crypto extension", "area at " + hex(pointer.offset) + " with " +
                                                         std::to_string(pointer.length) +
                                                         " bytes is empty or runs past the end of the file");
    } else if (method == CryptMethod::luks) {
        throw errors.invalid("crypt_method", "is 2 (LUKS) but the crypto header extension (0x0537be77) that locates "
                                             "the LUKS header is missing; the image cannot be decrypted by anyone");
    }

    if (const HeaderExtension* next = header.find_extension(ext_vmcrypt_next_luks)) {
        if (method != CryptMethod::vmcrypt_in_progress || !crypto)
            throw errors.invalid("vmcrypt next LUKS area extension (0x766d636e)",
                                 "is present but the image is not in the middle of a vmcrypt deep rekey (crypt_method " +
                                     std::to_string(header.crypt_method) + ")");
        if (next->data.size() != 16)
            throw errors.invalid("vmcrypt next LUKS area extension (0x766d636e)",
                                 "is " + std::to_string(next->data.size()) + " bytes, expected 16");
        CryptoHeaderPointer pointer = *header.next_luks_area();
        CryptoHeaderPointer current = *header.crypto_header();
        if (pointer.offset % header.cluster_size() != 0 || pointer.offset == 0)
            throw errors.invalid("vmcrypt next LUKS area offset", hex(pointer.offset) +
                                                                     " is not a non-zero multiple of the cluster size " +
                                                                     std::to_string(header.cluster_size()));
        if (pointer.length == 0 || pointer.offset > file_size || pointer.length > file_size - pointer.offset)
            throw errors.invalid("vmcrypt next LUKS area", "at " + hex(pointer.offset) + " with " +
                                                               std::to_string(pointer.length) +
                                                               " bytes is empty or runs past the end of the file");
        if (pointer.offset < current.offset + current.length && current.offset < pointer.offset + pointer.length)
            throw errors.invalid("vmcrypt next LUKS area", "at " + hex(pointer.offset) +
                                                               " overlaps the LUKS area the crypto extension names");
    }
}

}  // namespace

std::string hex(std::uint64_t value)
{
    char text[24];
    std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
    return text;
}

const HeaderExtension* Header::find_extension(std::uint32_t type) const
{
    for (const HeaderExtension& extension : extensions)
        if (extension.type == type)
            return &extension;
    return nullptr;
}

std::optional<CryptoHeaderPointer> Header::crypto_header() const
{
    const HeaderExtension* extension = find_extension(ext_crypto);
    if (!extension || extension->data.size() < 16)
        return std::nullopt;
    return CryptoHeaderPointer{load_be64(extension->data, 0), load_be64(extension->data, 8)};
}

std::optional<CryptoHeaderPointer> Header::next_luks_area() const
{
    const HeaderExtension* extension = find_extension(ext_vmcrypt_next_luks);
    if (!extension || extension->data.size() < 16)
        return std::nullopt;
    return CryptoHeaderPointer{load_be64(extension->data, 0), load_be64(extension->data, 8)};
}

std::vector<FeatureName> Header::feature_names() const
{
    std::vector<FeatureName> names;
    const HeaderExtension* table = find_extension(ext_feature_table);
    if (!table)
        return names;
    for (std::size_t offset = 0; offset + feature_entry_size <= table->data.size(); offset += feature_entry_size) {
        FeatureName entry;
        entry.kind = table->data[offset];
        entry.bit = table->data[offset + 1];
        const char* text = reinterpret_cast<const char*>(table->data.data() + offset + 2);
        std::size_t length = 0;
        while (length < feature_entry_size - 2 && text[length] != '\0')
            ++length;
        for (std::size_t i = 0; i < length; ++i)
            entry.name += (text[i] >= 0x20 && text[i] < 0x7f) ? text[i] : '?';
        names.push_back(std::move(entry));
    }
    return names;
}

std::string Header::feature_name(std::uint8_t kind, unsigned bit) const
{
    for (const FeatureName& entry : feature_names())
        if (entry.kind == kind && entry.bit == bit && !entry.name.empty())
            return entry.name + " (bit " + std::to_string(bit) + ")";
    return "bit " + std::to_string(bit);
}

Header parse_header(std::span<const std::uint8_t> cluster0, std::uint64_t file_size, const std::string& where)
{
    FieldErrors errors{where};
    if (cluster0.size() < v2_header_length)
        throw InvalidInput(where + ": qcow2 header: the file is " + std::to_string(cluster0.size()) +
                           " bytes, too short for a qcow2 header (72 bytes)");
    if (load_be32(cluster0, 0) != magic)
        throw InvalidInput(where + ": qcow2 header: magic is not \"QFI\\xfb\"; the file is not a qcow2 image");

    Header header;
    header.version = load_be32(cluster0, 4);
    if (header.version != 2 && header.version != 3)
        throw errors.unsupported("version", std::to_string(header.version) +
                                                " is not supported; vmcrypt reads qcow2 versions 2 and 3");
    header.backing_file_offset = load_be64(cluster0, 8);
    header.backing_file_size = load_be32(cluster0, 16);
    header.cluster_bits = load_be32(cluster0, 20);
    header.size = load_be64(cluster0, 24);
    header.crypt_method = load_be32(cluster0, 32);
    header.l1_size = load_be32(cluster0, 36);
    header.l1_table_offset = load_be64(cluster0, 40);
    header.refcount_table_offset = load_be64(cluster0, 48);
    header.refcount_table_clusters = load_be32(cluster0, 56);
    header.nb_snapshots = load_be32(cluster0, 60);
    header.snapshots_offset = load_be64(cluster0, 64);

    if (header.cluster_bits < min_cluster_bits || header.cluster_bits > max_cluster_bits)
        throw errors.invalid("cluster_bits", std::to_string(header.cluster_bits) +
                                                 " is out of range; qcow2 cluster sizes are 2^9 (512 bytes) to "
                                                 "2^21 (2 MiB)");
    const std::uint64_t cluster_size = header.cluster_size();

    if (header.version == 3) {
        if (cluster0.size() < v3_min_header_length)
            throw InvalidInput(where + ": qcow2 header: the file is " + std::to_string(cluster0.size()) +
                               " bytes, too short for a version 3 header (104 bytes)");
        header.incompatible_features = load_be64(cluster0, 72);
        header.compatible_features = load_be64(cluster0, 80);
        header.autoclear_features = load_be64(cluster0, 88);
        header.refcount_order = load_be32(cluster0, 96);
        header.header_length = load_be32(cluster0, 100);
        if (header.header_length < v3_min_header_length)
            throw errors.invalid("header_length", std::to_string(header.header_length) +
                                                      " is smaller than a version 3 header (104 bytes)");
        if (header.header_length > cluster_size || header.header_length > cluster0.size())
            throw errors.invalid("header_length", std::to_string(header.header_length) +
                                                      " runs past cluster 0 (" + std::to_string(cluster_size) +
                                                      " bytes) or the end of the file");
        header.extra_fields.assign(cluster0.begin() + v3_min_header_length, cluster0.begin() + header.header_length);
        if (!header.extra_fields.empty())
            header.compression_type = header.extra_fields[0];
        if (header.refcount_order > 6)
            throw errors.invalid("refcount_order", std::to_string(header.refcount_order) +
                                                       " is out of range; refcount widths are 1 to 64 bits (order 0 to 6)");
    }

    const bool has_compression_bit = (header.incompatible_features & incompat_compression_type) != 0;
    if (header.compression_type > 1)
        throw errors.unsupported("compression_type", std::to_string(header.compression_type) +
                                                         " is not supported; vmcrypt knows zlib (0) and zstd (1)");
    if ((header.compression_type != 0) != has_compression_bit)
        throw errors.invalid("compression_type", std::to_string(header.compression_type) +
                                                     " disagrees with incompatible feature bit 3, which must be set "
                                                     "exactly when the compression type is not zlib");
    if (header.extended_l2() && header.cluster_bits < 14)
        throw errors.invalid("cluster_bits", std::to_string(header.cluster_bits) +
                                                 " is below 14, which extended L2 entries (subclusters) require");

    auto method = static_cast<CryptMethod>(header.crypt_method);
    if (method != CryptMethod::none && method != CryptMethod::aes && method != CryptMethod::luks &&
        method != CryptMethod::vmcrypt_in_progress)
        throw errors.unsupported("crypt_method", std::to_string(header.crypt_method) +
                                                     " is not supported; known methods are 0 (none), 1 (AES), 2 (LUKS)");

    if (header.size > max_guest_size)
        throw errors.invalid("size", std::to_string(header.size) + " bytes is larger than a qcow2 image can map");
    if (std::uint64_t{header.l1_size} * 8 > max_l1_bytes)
        throw errors.invalid("l1_size", std::to_string(header.l1_size) +
                                            " entries is larger than QEMU's limit of 32 MiB for the L1 table");
    const std::uint64_t l1_needed = (header.guest_clusters() + header.l2_entries() - 1) / header.l2_entries();
    if (header.l1_size < l1_needed)
        throw errors.invalid("l1_size", std::to_string(header.l1_size) + " entries is too small for the size " +
                                            std::to_string(header.size) + " (needs " + std::to_string(l1_needed) + ")");
    if (header.l1_size > 0)
        check_table(errors, "l1_table_offset", header.l1_table_offset, std::uint64_t{header.l1_size} * 8, cluster_size,
                    file_size);

    if (header.refcount_table_clusters == 0)
        throw errors.invalid("refcount_table_clusters", "is 0; every qcow2 image needs a refcount table");
    if (std::uint64_t{header.refcount_table_clusters} * cluster_size > max_refcount_table_bytes)
        throw errors.invalid("refcount_table_clusters", std::to_string(header.refcount_table_clusters) +
                                                            " clusters is larger than QEMU's limit of 8 MiB");
    const std::uint64_t refcount_table_bytes = std::uint64_t{header.refcount_table_clusters} * cluster_size;
    check_table(errors, "refcount_table_offset", header.refcount_table_offset, refcount_table_bytes, cluster_size,
                file_size);
    if (header.l1_size > 0 && header.l1_table_offset < header.refcount_table_offset + refcount_table_bytes &&
        header.refcount_table_offset < header.l1_table_offset + std::uint64_t{header.l1_size} * 8)
        throw errors.invalid("l1_table_offset", hex(header.l1_table_offset) + " overlaps the refcount table at " +
                                                    hex(header.refcount_table_offset));

    if (header.nb_snapshots > max_snapshots)
        throw errors.invalid("nb_snapshots", std::to_string(header.nb_snapshots) + " is more than QEMU's limit of 65536");
    if (header.nb_snapshots > 0 && (header.snapshots_offset % cluster_size != 0 || header.snapshots_offset == 0 ||
                                    header.snapshots_offset >= file_size))
        throw errors.invalid("snapshots_offset", hex(header.snapshots_offset) +
                                                     " is not a cluster-aligned offset inside the file");

    if (header.backing_file_offset != 0) {
        if (header.backing_file_size > max_backing_name || header.backing_file_size == 0)
            throw errors.invalid("backing_file_size", std::to_string(header.backing_file_size) +
                                                          " is not 1 to 1023 bytes");
        // Compare against the room left so that an offset near 2^64 cannot wrap past the bound.
        const std::uint64_t cluster0_end = std::min<std::uint64_t>(cluster_size, cluster0.size());
        if (header.backing_file_offset < header.header_length || header.backing_file_offset > cluster0_end ||
            header.backing_file_size > cluster0_end - header.backing_file_offset)
            throw errors.invalid("backing_file_offset", hex(header.backing_file_offset) +
                                                            " puts the backing file name outside cluster 0");
        header.backing_file.assign(reinterpret_cast<const char*>(cluster0.data() + header.backing_file_offset),
                                   header.backing_file_size);
    }

    parse_extensions(header, cluster0, header.header_length, errors);
    if (header.backing_file_offset != 0)
        header.header_area_end = std::max(header.header_area_end, header.backing_file_offset + header.backing_file_size);

    if ((header.incompatible_features & incompat_data_file) == 0 && header.find_extension(ext_data_file))
        throw errors.invalid("data file extension (0x44415441)", "is present but incompatible feature bit 2 "
                                                                 "(external data file) is clear");
    validate_crypto(header, file_size, errors);
    return header;
}

std::vector<std::uint8_t> serialize_header(const Header& header, const std::string& where)
{
    const std::size_t fields_length = header.version == 3 ? header.header_length : v2_header_length;
    std::vector<std::uint8_t> bytes(std::max<std::size_t>(fields_length, v3_min_header_length), 0);
    std::span<std::uint8_t> out(bytes);
    store_be32(out, 0, magic);
    store_be32(out, 4, header.version);
    store_be32(out, 20, header.cluster_bits);
    store_be64(out, 24, header.size);
    store_be32(out, 32, header.crypt_method);
    store_be32(out, 36, header.l1_size);
    store_be64(out, 40, header.l1_table_offset);
    store_be64(out, 48, header.refcount_table_offset);
    store_be32(out, 56, header.refcount_table_clusters);
    store_be32(out, 60, header.nb_snapshots);
    store_be64(out, 64, header.snapshots_offset);
    if (header.version == 3) {
        store_be64(out, 72, header.incompatible_features);
        store_be64(out, 80, header.compatible_features);
        store_be64(out, 88, header.autoclear_features);
        store_be32(out, 96, header.refcount_order);
        store_be32(out, 100, header.header_length);
        std::copy(header.extra_fields.begin(), header.extra_fields.end(), bytes.begin() + v3_min_header_length);
        if (header.header_length > v3_min_header_length)
            bytes[v3_min_header_length] = header.compression_type;
    }
    bytes.resize(fields_length);

    for (const HeaderExtension& extension : header.extensions) {
        std::size_t offset = bytes.size();
        bytes.resize(offset + 8 + padded(extension.data.size()), 0);
        store_be32(bytes, offset, extension.type);
        store_be32(bytes, offset + 4, static_cast<std::uint32_t>(extension.data.size()));
        std::copy(extension.data.begin(), extension.data.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset + 8));
    }
    bytes.resize(bytes.size() + 8, 0);  // end marker

    if (!header.backing_file.empty()) {
        std::size_t offset = bytes.size();
        bytes.insert(bytes.end(), header.backing_file.begin(), header.backing_file.end());
        store_be64(bytes, 8, offset);
        store_be32(bytes, 16, static_cast<std::uint32_t>(header.backing_file.size()));
    }
    if (bytes.size() > header.cluster_size())
        throw InvalidInput(where + ": qcow2 header: the header with its extensions needs " +
                           std::to_string(bytes.size()) + " bytes, more than cluster 0 holds (" +
                           std::to_string(header.cluster_size()) + " bytes)");
    return bytes;
}

}  // namespace vmcrypt::qcow2
