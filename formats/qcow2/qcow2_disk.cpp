// Opening a qcow2 image: header, state checks, tables and refcounts.

#include "formats/qcow2/qcow2_disk.hpp"

#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/record/encryption_record.hpp"
#include "formats/qcow2/big_endian.hpp"
#include "formats/qcow2/consolidate.hpp"
#include "formats/qcow2/luks_area.hpp"

#include <algorithm>
#include <set>

namespace vmcrypt::qcow2 {

namespace {

constexpr std::size_t max_backing_chain = 16;

std::string feature_list(const Header& header, std::uint8_t kind, std::uint64_t bits)
{
    std::string text;
    for (unsigned bit = 0; bit < 64; ++bit)
        if (bits & (1ull << bit))
            text += (text.empty() ? "" : ", ") + header.feature_name(kind, bit);
    return text;
}

bool known_extension(std::uint32_t type)
{
    return type == ext_backing_format || type == ext_feature_table || type == ext_crypto || type == ext_vmcrypt ||
           type == ext_vmcrypt_next_luks || type == ext_vmcrypt_record_pointer || type == ext_data_file;
}

// The path a backing file name refers to: relative names are relative to the image's folder.
std::filesystem::path resolve_backing(const std::filesystem::path& image, const std::string& name)
{
    std::filesystem::path backing(name);
    if (backing.is_absolute())
        return backing;
    return image.parent_path() / backing;
}

// The backing file name of a qcow2 file, or nullopt when it is not a readable qcow2 image.
std::optional<std::string> backing_name_of(const std::filesystem::path& path)
{
    try {
        File file = File::open(path, Access::read_only);
        std::vector<std::uint8_t> cluster0 = read_cluster0(file);
        if (cluster0.size() < 4 || cluster0[0] != 'Q' || cluster0[1] != 'F' || cluster0[2] != 'I' || cluster0[3] != 0xfb)
            return std::nullopt;
        return parse_header(cluster0, file.size(), path.string()).backing_file;
    } catch (const Error&) {
        return std::nullopt;
    }
}

}  // namespace

std::vector<std::uint8_t> read_cluster0(const File& file)
{
    std::vector<std::uint8_t> bytes(std::min<std::uint64_t>(file.size(), 1ull << max_cluster_bits));
    bytes.resize(file.read_at(0, bytes));
    if (bytes.size() >= 24) {
        std::uint32_t cluster_bits = (std::uint32_t{bytes[20]} << 24) | (std::uint32_t{bytes[21]} << 16) |
                                     (std::uint32_t{bytes[22]} << 8) | bytes[23];
        if (cluster_bits >= min_cluster_bits && cluster_bits <= max_cluster_bits)
            bytes.resize(std::min<std::size_t>(bytes.size(), std::size_t{1} << cluster_bits));
    }
    return bytes;
}

std::string QcowDisk::qemu_img_command(const std::string& subcommand, const std::string& output) const
{
    const std::string output_argument = output.empty() ? "" : " " + output;
    if (static_cast<CryptMethod>(header_.crypt_method) != CryptMethod::luks)
        return "qemu-img " + subcommand + " " + name_ + output_argument;

    // qemu-img needs the LUKS secret, read from a file so that it stays off the command line.
    const bool vmcrypt_record = header_.find_extension(ext_vmcrypt) || header_.find_extension(ext_vmcrypt_record_pointer);
    const std::string secret_file = vmcrypt_record
                                        ? "(write sec.txt with: vmcrypt qemu-secret -o sec.txt " + name_ + ")"
                                        : "(sec.txt holding the image's LUKS passphrase)";
    return "qemu-img " + subcommand + " --object secret,id=sec0,file=sec.txt --image-opts driver=qcow2,file.filename=" +
           name_ + ",encrypt.key-secret=sec0" + output_argument + " " + secret_file;
}

std::unique_ptr<QcowDisk> QcowDisk::open(File file, const std::filesystem::path& path)
{
    std::unique_ptr<QcowDisk> disk(new QcowDisk());
    disk->path_ = path;
    disk->name_ = path.string();
    disk->file_ = std::make_unique<File>(std::move(file));
    disk->load(true);
    return disk;
}

void QcowDisk::load(bool check_state)
{
    const File& file = *file_;
    const bool writing = file.access() == Access::read_write;
    std::vector<std::uint8_t> cluster0 = read_cluster0(file);
    header_ = parse_header(cluster0, file.size(), name_);

    if (writing && check_state) {
        // A running QEMU keeps the image in use (and may hold the dirty bit), so report that first.
        lock_exclusive(*file_);
    }

    const std::uint64_t unknown = header_.incompatible_features & ~incompat_known;
    if (unknown != 0)
        throw UnsupportedInput(name_ + ": qcow2 header: unknown incompatible features: " +
                               feature_list(header_, 0, unknown) + "; vmcrypt cannot read this image safely");
    snapshots_ = read_snapshots(file, header_, name_);
    if (writing && check_state) {
        if (header_.incompatible_features & incompat_corrupt)
            throw WrongDiskState(name_ + ": qcow2 header: the corrupt bit is set; repair the image with: " +
                                 qemu_img_command("check -r all"));
        if (header_.incompatible_features & incompat_dirty)
            throw WrongDiskState(name_ + ": qcow2 header: the dirty bit is set (lazy refcounts were not written "
                                         "back); repair the image with: " + qemu_img_command("check -r all"));
        if (header_.incompatible_features & incompat_data_file)
            throw UnsupportedInput(name_ + ": qcow2 header: the image keeps its data in an external data file, "
                                           "which vmcrypt does not rewrite; convert it with: qemu-img convert -O qcow2 " +
                                           name_ + " new.qcow2");
        if (header_.nb_snapshots > 0 && static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::luks)
            throw WrongDiskState(name_ + ": the image has " + std::to_string(header_.nb_snapshots) +
                                 " internal snapshots, which vmcrypt does not merge while the image is encrypted; "
                                 "delete each with: " + qemu_img_command("snapshot -d TAG") + " (" +
                                 qemu_img_command("snapshot -l") + " lists the tags)");
        if (header_.nb_snapshots > 0)
            throw WrongDiskState(name_ + ": the image has " + std::to_string(header_.nb_snapshots) +
                                 " internal snapshots; delete them first with: vmcrypt consolidate-snapshots " + name_ +
                                 " (qemu-img snapshot -l lists them)");
    }

    next_area_ = header_.next_luks_area();
    load_record();
    if (!writing) {
        map_ = walk_cluster_tables(file, header_, nullptr, name_, sector_numbering());
        refcounts_.reset();
    } else {
        refcounts_ = Refcounts::load(file, header_, name_);
        try {
            const ClusterReferences references = count_references();
            check_refcounts(references);
            leak_repairs_.clear();
            if (references_complete())
                leak_repairs_ = find_leak_repairs(references);
        } catch (const SharedCluster& e) {
            // Rewriting a shared cluster in place would encrypt it twice with two tweaks. A copy gives
            // every guest cluster its own host cluster.
            const bool encrypted = static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::luks;
            throw InvalidInput(std::string(e.what()) + "; qemu-img check -r all keeps such sharing, so copy the "
                               "image with: " + qemu_img_command("convert -O qcow2", "new.qcow2") +
                               (encrypted ? ", which makes a plaintext copy to encrypt again," : "") +
                               " and use the copy");
        }
    }
}

void QcowDisk::load_record()
{
    record_.reset();
    if (const HeaderExtension* extension = header_.find_extension(ext_vmcrypt)) {
        std::string text(extension->data.begin(), extension->data.end());
        try {
            record_ = fields_from_text(text);
        } catch (const Error& e) {
            throw InvalidInput(name_ + ": vmcrypt header extension (0x766d6372) is damaged: " + e.what());
        }
    }
    if (const HeaderExtension* pointer = header_.find_extension(ext_vmcrypt_record_pointer))
        load_record_from_luks_area(*pointer);
    auto method = static_cast<CryptMethod>(header_.crypt_method);
    if (method == CryptMethod::vmcrypt_in_progress && !record_)
        throw InvalidInput(name_ + ": qcow2 header: crypt_method is vmcrypt's in-progress value but the vmcrypt "
                                   "header extension (0x766d6372) is missing; restore the image from a backup");
    if (record_ && method != CryptMethod::vmcrypt_in_progress && method != CryptMethod::luks)
        throw InvalidInput(name_ + ": qcow2 header: a vmcrypt record is present but crypt_method is " +
                           std::to_string(header_.crypt_method) + "; the header was changed by another program");
}

ClusterReferences QcowDisk::count_references()
{
    ClusterReferences references(header_.cluster_bits, file_->size(), name_);
    references.add_exclusive(0, header_.cluster_size(), "the header");
    refcounts_->add_references(references);
    map_ = walk_cluster_tables(*file_, header_, &references, name_, sector_numbering());
    if (std::optional<CryptoHeaderPointer> area = header_.crypto_header()) {
        // While vmcrypt's guard is set, decrypt may have released the area already (its last step
        // before the final header write), so an area whose refcount is 0 is not counted.
        bool released = static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::vmcrypt_in_progress &&
                        refcounts_->get(area->offset >> header_.cluster_bits) == 0;
        if (!released)
            references.add_exclusive(area->offset, area->length, "the LUKS header area");
    }
    if (std::optional<CryptoHeaderPointer> next = header_.next_luks_area())
        references.add_exclusive(next->offset, next->length, "the next LUKS header area of a deep rekey");
    return references;
}

void QcowDisk::check_refcounts(const ClusterReferences& references) const
{
    for (std::uint64_t cluster = 0; cluster < references.clusters(); ++cluster) {
        std::uint64_t count = references.count(cluster);
        if (count == 0)
            continue;
        std::uint64_t refcount = refcounts_->get(cluster);
        if (refcount < count)
            throw InvalidInput(name_ + ": refcount of cluster " + std::to_string(cluster) + " (offset " +
                               hex(cluster << header_.cluster_bits) + ") is " + std::to_string(refcount) + " but " +
                               std::to_string(count) + " references use it; repair the image with: qemu-img check -r all " +
                               name_);
    }
}

void QcowDisk::load_record_from_luks_area(const HeaderExtension& pointer)
{
    const std::string what = name_ + ": vmcrypt record pointer extension (0x766d7270)";
    const std::optional<CryptoHeaderPointer> area = header_.crypto_header();
    if (record_)
        throw InvalidInput(what + ": the header also contains the record itself (0x766d6372); restore the image "
                                  "from a backup");
    if (pointer.data.size() != 16 || !area)
        throw InvalidInput(what + " is not 16 bytes, or the crypto header extension it points into is missing; "
                                  "restore the image from a backup");
    const std::uint64_t offset = load_be64(pointer.data, 0);
    const std::uint64_t length = load_be64(pointer.data, 8);
    if (offset != area->offset + luks_record_offset || length != luks_record_capacity)
        throw InvalidInput(what + ": the record at " + hex(offset) + " with " + std::to_string(length) +
                           " bytes is not sectors 2 to 7 of the LUKS area at " + hex(area->offset) +
                           "; restore the image from a backup");

    std::vector<std::uint8_t> bytes(luks_record_capacity);
    if (!file_->read_exact(offset, bytes))
        throw InvalidInput(what + ": the record at " + hex(offset) + " is past the end of the file");
    const auto text_end = std::find(bytes.begin(), bytes.end(), std::uint8_t{0});
    try {
        record_ = fields_from_text(std::string(bytes.begin(), text_end));
    } catch (const Error& e) {
        throw InvalidInput(name_ + ": the vmcrypt record in the LUKS area at " + hex(offset) + " is damaged: " +
                           e.what());
    }
    if (record_->empty())
        throw InvalidInput(name_ + ": the vmcrypt record in the LUKS area at " + hex(offset) + " is empty");
}

SectorNumbering QcowDisk::sector_numbering() const
{
    if (static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::aes)
        return SectorNumbering::guest;
    if (record_)
        for (const auto& [name, value] : *record_)
            if (name == "tweak" && value == "guest-sector")
                return SectorNumbering::guest;
    return SectorNumbering::host;
}

std::string QcowDisk::tweak_rule() const
{
    return sector_numbering() == SectorNumbering::guest ? "guest-sector" : "host-sector";
}

bool QcowDisk::references_complete() const
{
    if (header_.nb_snapshots > 0 || (header_.autoclear_features & autoclear_bitmaps))
        return false;
    return std::all_of(header_.extensions.begin(), header_.extensions.end(),
                       [](const HeaderExtension& extension) { return known_extension(extension.type); });
}

std::optional<Disk::MergeInProgress> QcowDisk::merge_in_progress() const
{
    std::optional<UnfinishedMerge> merge = find_unfinished_qcow2_merge(path_);
    if (!merge)
        return std::nullopt;
    return MergeInProgress{merge->intent_path, merge->top};
}

DiskRelations QcowDisk::relations() const
{
    DiskRelations relations;
    // A path that cannot be resolved only weakens the loop check below, so it is not an error here.
    std::error_code self_error;
    std::set<std::filesystem::path> seen{std::filesystem::weakly_canonical(path_, self_error)};
    std::filesystem::path current = path_;
    std::optional<std::string> backing = header_.backing_file.empty() ? std::nullopt
                                                                      : std::optional<std::string>(header_.backing_file);
    while (backing && relations.parents.size() < max_backing_chain) {
        relations.parents.push_back(*backing);
        std::filesystem::path next = resolve_backing(current, *backing);
        std::error_code ec;
        std::filesystem::path canonical = std::filesystem::weakly_canonical(next, ec);
        if (ec || !seen.insert(canonical).second || !std::filesystem::is_regular_file(next, ec))
            break;
        current = next;
        backing = backing_name_of(next);
        if (backing && backing->empty())
            backing.reset();
    }

    // Images in the same folder whose backing file is this one.
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::weakly_canonical(path_, ec);
    for (const auto& entry : std::filesystem::directory_iterator(path_.parent_path().empty() ? "." : path_.parent_path(), ec)) {
        std::error_code entry_error;
        if (!entry.is_regular_file(entry_error) || std::filesystem::weakly_canonical(entry.path(), entry_error) == self)
            continue;
        std::optional<std::string> name = backing_name_of(entry.path());
        if (!name || name->empty())
            continue;
        if (std::filesystem::weakly_canonical(resolve_backing(entry.path(), *name), entry_error) == self)
            relations.children.push_back(entry.path().filename().string());
    }
    std::sort(relations.children.begin(), relations.children.end());
    return relations;
}

std::optional<std::string> QcowDisk::foreign_encryption() const
{
    switch (static_cast<CryptMethod>(header_.crypt_method)) {
    case CryptMethod::aes:
        return std::string("legacy qcow AES-128-CBC (crypt_method 1), which is insecure");
    case CryptMethod::luks:
        if (!record_)
            return std::string("QEMU LUKS (crypt_method 2)");
        return std::nullopt;
    default:
        return std::nullopt;
    }
}

std::vector<ExtentInfo> QcowDisk::extents() const
{
    ExtentInfo info;
    info.file = path_.filename().string();
    info.type = "QCOW2";
    info.access = "RW";
    info.size = header_.size;
    info.file_size = file_->size();
    info.allocated = map_.data_bytes;
    return {info};
}

}  // namespace vmcrypt::qcow2
