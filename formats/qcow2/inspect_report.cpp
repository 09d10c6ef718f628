#include "formats/qcow2/inspect_report.hpp"

#include "core/text/shell_words.hpp"

namespace vmcrypt::qcow2 {

namespace {

using nlohmann::json;

// Feature names from docs/interop/qcow2.txt, used when the image has no feature name table entry.
std::string known_feature_name(std::uint8_t kind, unsigned bit)
{
    static const char* const incompatible[] = {"dirty", "corrupt", "external data file", "compression type",
                                               "extended L2"};
    static const char* const autoclear[] = {"bitmaps", "raw external data"};
    if (kind == 0 && bit < std::size(incompatible))
        return incompatible[bit];
    if (kind == 1 && bit == 0)
        return "lazy refcounts";
    if (kind == 2 && bit < std::size(autoclear))
        return autoclear[bit];
    return {};
}

json feature_names(const Header& header, std::uint8_t kind, std::uint64_t bits)
{
    json names = json::array();
    for (unsigned bit = 0; bit < 64; ++bit) {
        if ((bits & (1ull << bit)) == 0)
            continue;
        std::string name = known_feature_name(kind, bit);
        names.push_back(name.empty() ? header.feature_name(kind, bit) : name);
    }
    return names;
}

std::string extension_name(std::uint32_t type)
{
    switch (type) {
    case ext_backing_format:
        return "backing file format";
    case ext_feature_table:
        return "feature name table";
    case ext_bitmaps:
        return "bitmaps";
    case ext_crypto:
        return "full disk encryption header pointer";
    case ext_data_file:
        return "external data file name";
    case ext_vmcrypt:
        return "vmcrypt encryption record";
    case ext_vmcrypt_record_pointer:
        return "vmcrypt encryption record pointer";
    case ext_vmcrypt_next_luks:
        return "vmcrypt next LUKS area (deep rekey in progress)";
    default:
        return "unknown (kept as is)";
    }
}

std::string encryption_kind(const QcowDisk& disk)
{
    switch (static_cast<CryptMethod>(disk.header().crypt_method)) {
    case CryptMethod::none:
        return "none";
    case CryptMethod::aes:
        return "legacy-aes";
    case CryptMethod::luks:
        return disk.record() ? "vmcrypt" : "qemu-luks";
    case CryptMethod::vmcrypt_in_progress:
        return "vmcrypt-in-progress";
    }
    return "unknown";
}

// Why legacy qcow AES is insecure.
constexpr const char* legacy_aes_weakness =
    "AES-128-CBC with a predictable IV (the guest sector number), which leaks patterns and allows "
    "watermarking, and the password is used directly as the key (no salt, no key derivation, no key check)";

std::string text_of(const HeaderExtension* extension)
{
    return extension ? std::string(extension->data.begin(), extension->data.end()) : std::string();
}

}  // namespace

json describe_image(const QcowDisk& disk, const std::string& disk_path)
{
    const Header& header = disk.header();
    const ClusterMap& map = disk.cluster_map();

    json extensions = json::array();
    for (const HeaderExtension& extension : header.extensions)
        extensions.push_back({{"type", hex(extension.type)},
                              {"name", extension_name(extension.type)},
                              {"length", extension.data.size()}});

    json snapshots = json::array();
    for (const Snapshot& snapshot : disk.snapshots())
        snapshots.push_back({{"id", snapshot.id},
                             {"name", snapshot.name},
                             {"date", snapshot.date_seconds},
                             {"vmStateSize", snapshot.vm_state_size},
                             {"diskSize", snapshot.disk_size}});

    json luks_area = nullptr;
    if (std::optional<CryptoHeaderPointer> area = header.crypto_header())
        luks_area = {{"offset", area->offset}, {"length", area->length}};

    const HeaderExtension* backing_format = header.find_extension(ext_backing_format);
    const HeaderExtension* data_file = header.find_extension(ext_data_file);
    const std::string encryption = encryption_kind(disk);
    const bool insecure = encryption == "legacy-aes";
    return {{"version", header.version},
            {"clusterSize", header.cluster_size()},
            {"refcountBits", header.refcount_bits()},
            {"compressionType", header.compression_type == 0 ? "zlib" : "zstd"},
            {"extendedL2", header.extended_l2()},
            {"features",
             {{"incompatible", feature_names(header, 0, header.incompatible_features)},
              {"compatible", feature_names(header, 1, header.compatible_features)},
              {"autoclear", feature_names(header, 2, header.autoclear_features)}}},
            {"dirty", (header.incompatible_features & incompat_dirty) != 0},
            {"corrupt", (header.incompatible_features & incompat_corrupt) != 0},
            {"allocation",
             {{"dataClusters", map.data_clusters},
              {"dataBytes", map.data_bytes},
              {"zeroClusters", map.zero_clusters},
              {"compressedClusters", map.compressed.size()},
              {"compressedBytes", map.compressed_bytes}}},
            {"snapshots", snapshots},
            {"backingFile", header.backing_file.empty() ? json(nullptr) : json(header.backing_file)},
            {"backingFormat", backing_format ? json(text_of(backing_format)) : json(nullptr)},
            {"dataFile", data_file ? json(text_of(data_file)) : json(nullptr)},
            {"cryptMethod", header.crypt_method},
            {"encryption", encryption},
            {"insecure", insecure},
            {"insecureReason", insecure ? json(legacy_aes_weakness) : json(nullptr)},
            {"recommendation", insecure ? json("decrypt it with its password, then encrypt it properly: " +
                                               shell_command({"vmcrypt", "decrypt", "--passphrase", disk_path}) +
                                               ", then " + shell_command({"vmcrypt", "encrypt", disk_path}))
                                        : json(nullptr)},
            {"luksArea", luks_area},
            {"extensions", extensions}};
}

}  // namespace vmcrypt::qcow2
