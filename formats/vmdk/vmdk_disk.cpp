#include "formats/vmdk/vmdk_disk.hpp"

#include "core/error.hpp"

#include <algorithm>

namespace vmcrypt::vmdk {

std::vector<File*> VmdkDisk::files()
{
    std::vector<File*> result;
    result.reserve(files_.size());
    for (const std::unique_ptr<File>& file : files_)
        result.push_back(file.get());
    return result;
}

std::vector<VmdkDisk::ExtentFile> VmdkDisk::extent_files()
{
    std::vector<ExtentFile> result;
    for (const Extent& extent : extents_) {
        File* file = extent.file_index ? files_[*extent.file_index].get() : nullptr;
        result.push_back(ExtentFile{extent.line, file, extent.first_sector});
    }
    return result;
}

// The way out when the record does not fit the descriptor. A disk that is encrypted now must never be
// copied with qemu-img convert: the copy gets a new descriptor without the record, so nothing could
// decrypt it.
std::string VmdkDisk::descriptor_room_hint(const std::optional<RecordFields>& fields) const
{
    std::size_t slots = 0;
    if (fields)
        for (const auto& [name, value] : *fields)
            if (name.starts_with("keySlot."))
                ++slots;
    const std::string fewer_slots = slots > 1 ? "use fewer key slots, or " : "";

    if (record())
        return fewer_slots + "decrypt the disk, convert it to one with a separate descriptor (qemu-img convert -O "
                             "vmdk -o subformat=monolithicFlat " + name_ + " new.vmdk) and encrypt the copy; do not "
                             "convert it while it is encrypted, because the copy would lose the encryption record";
    if (!embedded_)
        return fewer_slots.empty() ? "the record cannot be smaller" : "use fewer key slots";
    return fewer_slots + "convert the disk to one with a separate descriptor first: qemu-img convert -O vmdk -o "
                         "subformat=monolithicFlat " + name_ + " new.vmdk";
}

MetadataWrite VmdkDisk::record_update(const std::optional<RecordFields>& fields) const
{
    Descriptor updated = descriptor_;
    if (fields)
        updated.set_record(*fields);
    else
        updated.remove_record();

    MetadataWrite write;
    write.file_index = 0;
    if (embedded_) {
        std::string text = updated.text();
        std::uint64_t needed = text.size() + 1;  // qemu and VMware read the area as a NUL-terminated string
        if (needed > embedded_->size)
            throw InvalidInput(name_ + ": embedded descriptor: the descriptor with the vmcrypt record needs " +
                               std::to_string(needed) + " bytes, but descriptorSize reserves only " +
                               std::to_string(embedded_->size) + "; " + descriptor_room_hint(fields));
        // NOTE: the whole area after the text becomes NULs. Characters that qemu leaves behind the NUL
        // when it shortens the CID line therefore do not survive a record round trip, but the text does.
        write.offset = embedded_->offset;
        write.bytes.assign(text.begin(), text.end());
        write.bytes.resize(static_cast<std::size_t>(embedded_->size), 0);
        return write;
    }

    std::string bytes = updated.serialize();
    if (bytes.size() >= max_descriptor_file_size)
        throw InvalidInput(name_ + ": descriptor: the descriptor with the vmcrypt record would be " +
                           std::to_string(bytes.size()) + " bytes, but a descriptor file must be smaller than 1 MiB; " +
                           descriptor_room_hint(fields));
    write.offset = 0;
    write.bytes.assign(bytes.begin(), bytes.end());
    write.truncate_to = bytes.size();
    return write;
}

std::string VmdkDisk::read_descriptor_bytes() const
{
    const File& file = *files_[0];
    std::uint64_t offset = embedded_ ? embedded_->offset : 0;
    std::uint64_t length = embedded_ ? embedded_->size : file.size();
    if (!embedded_ && length >= max_descriptor_file_size)
        throw InvalidInput(name_ + ": descriptor file is " + std::to_string(length) +
                           " bytes, but a descriptor file must be smaller than 1 MiB");
    std::string bytes(static_cast<std::size_t>(length), '\0');
    bytes.resize(file.read_at(offset, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()}));
    return bytes;
}

void VmdkDisk::apply(const MetadataWrite& update)
{
    File& file = *files_[0];
    if (file.access() != Access::read_write)
        throw Error(ExitCode::failure, name_ + ": apply: the disk is open read-only, so its descriptor cannot be written");

    bool targets_descriptor = update.file_index == 0 &&
                              (embedded_ ? update.offset == embedded_->offset && update.bytes.size() == embedded_->size &&
                                               !update.truncate_to
                                         : update.offset == 0 && update.truncate_to == update.bytes.size());
    if (!targets_descriptor)
        throw Error(ExitCode::failure, name_ + ": apply: the metadata write does not cover exactly the descriptor "
                                               "(file " + std::to_string(update.file_index) + ", offset " +
                                               std::to_string(update.offset) + ", " +
                                               std::to_string(update.bytes.size()) + " bytes)");

    // Reject a write whose text would not parse before touching the file.
    std::string_view new_bytes(reinterpret_cast<const char*>(update.bytes.data()), update.bytes.size());
    Descriptor::parse(new_bytes, name_);

    if (embedded_) {
        file.write_exact(update.offset, update.bytes);
    } else {
        // Overwrite a longer old tail with NULs before truncating, so that a crash in between leaves a
        // descriptor that ends at the first NUL instead of one followed by leftover lines.
        std::uint64_t old_size = file.size();
        std::vector<std::uint8_t> bytes = update.bytes;
        if (old_size > bytes.size())
            bytes.resize(static_cast<std::size_t>(old_size), 0);
        file.write_exact(0, bytes);
        file.truncate(*update.truncate_to);
    }
    file.sync_data();

    descriptor_ = Descriptor::parse(read_descriptor_bytes(), name_);
}

std::vector<ExtentInfo> VmdkDisk::extents() const
{
    std::vector<ExtentInfo> result;
    for (const Extent& extent : extents_) {
        ExtentInfo info;
        info.file = extent.line.file;
        info.type = extent.line.type;
        info.access = extent.line.access;
        info.guest_offset = extent.first_sector * 512;
        info.size = extent.line.sectors * 512;
        info.file_size = extent.file_size;
        info.allocated = extent.allocated_bytes;
        result.push_back(info);
    }
    return result;
}

}  // namespace vmcrypt::vmdk
