#pragma once
// The qcow2 header (version 2 and 3) and its header extensions, all in cluster 0.
//
// Layout from QEMU's docs/interop/qcow2.txt; every integer is big-endian. Limits follow QEMU 7.2
// (block/qcow2.h) so that vmcrypt accepts what QEMU opens and rejects what QEMU rejects. Header bytes
// past the known fields and header extensions of unknown type are kept byte for byte.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

inline constexpr std::uint32_t magic = 0x514649fb;  // "QFI\xfb"
inline constexpr std::uint32_t min_cluster_bits = 9;
inline constexpr std::uint32_t max_cluster_bits = 21;
inline constexpr std::uint64_t max_l1_bytes = 32ull << 20;            // QCOW_MAX_L1_SIZE
inline constexpr std::uint64_t max_refcount_table_bytes = 8ull << 20; // QCOW_MAX_REFTABLE_SIZE
inline constexpr std::uint32_t max_snapshots = 65536;
inline constexpr std::uint32_t max_backing_name = 1023;
inline constexpr std::uint32_t v2_header_length = 72;
inline constexpr std::uint32_t v3_min_header_length = 104;
inline constexpr std::uint32_t header_length_written = 112;  // what QEMU 7.2 writes for version 3

// Header extension types.
inline constexpr std::uint32_t ext_end = 0;
inline constexpr std::uint32_t ext_backing_format = 0xe2792aca;
inline constexpr std::uint32_t ext_feature_table = 0x6803f857;
inline constexpr std::uint32_t ext_bitmaps = 0x23852875;
inline constexpr std::uint32_t ext_crypto = 0x0537be77;  // full disk encryption header pointer
inline constexpr std::uint32_t ext_data_file = 0x44415441;
// vmcrypt's encryption record as "key=value\n" text; see vmcrypt-format(5). "vmcr" in ASCII.
inline constexpr std::uint32_t ext_vmcrypt = 0x766d6372;
// The LUKS area that a deep rekey built for the new DEK, in the crypto extension's layout (offset and
// length, big-endian). Present only while vmcrypt's guard is set; the final header write of the rekey
// moves it into the crypto extension. "vmcn" in ASCII.
inline constexpr std::uint32_t ext_vmcrypt_next_luks = 0x766d636e;
// The location of the vmcrypt record when it does not fit in cluster 0 (512-byte clusters): offset and length,
// big-endian, of the record bytes inside the LUKS area the crypto extension names. "vmrp" in ASCII.
inline constexpr std::uint32_t ext_vmcrypt_record_pointer = 0x766d7270;

// Incompatible feature bits.
inline constexpr std::uint64_t incompat_dirty = 1ull << 0;
inline constexpr std::uint64_t incompat_corrupt = 1ull << 1;
inline constexpr std::uint64_t incompat_data_file = 1ull << 2;
inline constexpr std::uint64_t incompat_compression_type = 1ull << 3;
inline constexpr std::uint64_t incompat_extended_l2 = 1ull << 4;
inline constexpr std::uint64_t incompat_known = 0x1f;
// Compatible and autoclear feature bits.
inline constexpr std::uint64_t compat_lazy_refcounts = 1ull << 0;
inline constexpr std::uint64_t autoclear_bitmaps = 1ull << 0;
inline constexpr std::uint64_t autoclear_raw_data = 1ull << 1;

enum class CryptMethod : std::uint32_t {
    none = 0,
    aes = 1,   // legacy qcow AES-128-CBC, deprecated and insecure
    luks = 2,  // LUKS1 header in the clusters the crypto extension names
    // vmcrypt's "operation in progress" guard, "vmcp" in ASCII. QEMU and libqcow reject an unknown
    // method, so no other program opens a disk that vmcrypt is half way through rewriting.
    vmcrypt_in_progress = 0x766d6370,
};

struct HeaderExtension {
    std::uint32_t type = 0;
    std::vector<std::uint8_t> data;
};

// One entry of the feature name table extension.
struct FeatureName {
    std::uint8_t kind = 0;  // 0 incompatible, 1 compatible, 2 autoclear
    std::uint8_t bit = 0;
    std::string name;
};

// The full disk encryption header pointer (extension 0x0537be77).
struct CryptoHeaderPointer {
    std::uint64_t offset = 0;  // bytes, cluster-aligned
    std::uint64_t length = 0;  // bytes
};

struct Header {
    std::uint32_t version = 3;
    std::uint64_t backing_file_offset = 0;
    std::uint32_t backing_file_size = 0;
    std::uint32_t cluster_bits = 16;
    std::uint64_t size = 0;  // guest bytes
    std::uint32_t crypt_method = 0;
    std::uint32_t l1_size = 0;  // entries
    std::uint64_t l1_table_offset = 0;
    std::uint64_t refcount_table_offset = 0;
    std::uint32_t refcount_table_clusters = 0;
    std::uint32_t nb_snapshots = 0;
    std::uint64_t snapshots_offset = 0;
    std::uint64_t incompatible_features = 0;
    std::uint64_t compatible_features = 0;
    std::uint64_t autoclear_features = 0;
    std::uint32_t refcount_order = 4;
    std::uint32_t header_length = v2_header_length;
    std::uint8_t compression_type = 0;       // 0 zlib, 1 zstd
    std::vector<std::uint8_t> extra_fields;  // header bytes after the known fields, up to header_length

    std::vector<HeaderExtension> extensions;  // in file order, without the end marker
    std::string backing_file;
    std::uint64_t header_area_end = 0;  // bytes of cluster 0 in use: header, extensions, end marker, name

    std::uint64_t cluster_size() const { return 1ull << cluster_bits; }
    bool extended_l2() const { return (incompatible_features & incompat_extended_l2) != 0; }
    std::uint64_t l2_entry_size() const { return extended_l2() ? 16 : 8; }
    std::uint64_t l2_entries() const { return cluster_size() / l2_entry_size(); }
    std::uint64_t refcount_bits() const { return 1ull << refcount_order; }
    // Guest clusters, rounded up.
    std::uint64_t guest_clusters() const { return (size + cluster_size() - 1) >> cluster_bits; }

    const HeaderExtension* find_extension(std::uint32_t type) const;
    std::optional<CryptoHeaderPointer> crypto_header() const;
    // The pending LUKS area of an unfinished deep rekey (extension 0x766d636e), or nullopt.
    std::optional<CryptoHeaderPointer> next_luks_area() const;
    std::vector<FeatureName> feature_names() const;
    // The name of a feature bit from the feature name table, or "bit N".
    std::string feature_name(std::uint8_t kind, unsigned bit) const;
};

// Parses and validates the header at the start of `cluster0` (the first cluster of the file, or the
// whole file when it is shorter). `file_size` bounds every table offset. Throws InvalidInput naming
// `where` and the field, or UnsupportedInput for a version or crypt method vmcrypt does not know.
// Unknown incompatible features are not rejected here; the caller decides (inspect reports them).
Header parse_header(std::span<const std::uint8_t> cluster0, std::uint64_t file_size, const std::string& where);

// Serializes the header, its extensions, the end marker and the backing file name, as QEMU lays them
// out: fields, extensions from header_length on, name after the end marker. Throws InvalidInput when
// the result does not fit in one cluster.
std::vector<std::uint8_t> serialize_header(const Header& header, const std::string& where);

std::string hex(std::uint64_t value);

}  // namespace vmcrypt::qcow2
