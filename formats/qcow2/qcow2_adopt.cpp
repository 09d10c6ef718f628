// Giving a qcow2 that QEMU encrypted with LUKS vmcrypt's key slots, without decrypting it: the LUKS
// master key becomes the DEK. Besides vmcrypt's record (written by the caller through the key-change
// journal), the LUKS header gets one more key slot, opened by the secret that vmcrypt derives from the
// DEK, so that `vmcrypt qemu-secret` works as on an image that vmcrypt encrypted. The user's own LUKS
// key slots stay as they are.

#include "core/engine/fault_injection.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "formats/qcow2/qemu_secret.hpp"

namespace vmcrypt::qcow2 {

namespace {

// True when an enabled key slot with vmcrypt's iteration count opens with `secret`: a slot that an
// earlier, interrupted adoption added. vmcrypt writes its slot with luks_min_iterations, so slots with
// other counts are not tried: a passphrase slot made by QEMU costs seconds of PBKDF2.
bool has_vmcrypt_slot(const LuksHeader& luks, std::span<const std::uint8_t> area, const SecureBytes& secret,
                      const std::string& where)
{
    LuksHeader cheap = luks;
    bool any = false;
    for (LuksKeySlot& slot : cheap.slots) {
        slot.active = slot.active && slot.iterations == luks_min_iterations;
        any = any || slot.active;
    }
    if (!any)
        return false;
    try {
        unlock_luks(cheap, area, secret, where);
        return true;
    } catch (const WrongKey&) {
        return false;
    }
}

}  // namespace

bool QcowDisk::foreign_adoptable() const
{
    return static_cast<CryptMethod>(header_.crypt_method) == CryptMethod::luks && !record_ && header_.crypto_header();
}

void QcowDisk::prepare_adopt(const SecureBytes& dek, const RecordFields& record)
{
    if (file_->access() != Access::read_write)
        throw Error(ExitCode::failure, name_ + ": prepare_adopt: the image is open read-only");
    if (!foreign_adoptable())
        throw WrongDiskState(name_ + ": only a qcow2 that QEMU encrypted with LUKS can be given vmcrypt key slots "
                                     "this way; nothing was written");

    // Nothing is written before these checks: the record must fit in cluster 0, the master key must
    // match the header, and a key slot must be free.
    record_update(record);
    const CryptoHeaderPointer pointer = *header_.crypto_header();
    std::vector<std::uint8_t> area(static_cast<std::size_t>(pointer.length));
    if (!file_->read_exact(pointer.offset, area))
        throw InvalidInput(name_ + ": LUKS header area at " + hex(pointer.offset) + " is past the end of the file");
    const std::string where = name_ + ": LUKS header";
    const LuksHeader luks = parse_luks_header(area, where);
    const SecureBytes secret = derive_qemu_secret(dek);
    if (has_vmcrypt_slot(luks, area, secret, where)) {
        log_info(name_ + ": the LUKS header already has a key slot for vmcrypt's secret");
        return;
    }
    std::vector<std::uint8_t> updated = area;
    const std::size_t index = add_luks_key_slot(updated, luks, dek, secret, luks_min_iterations, where);

    // The key material and every other changed sector first: the slot is still disabled, so QEMU and
    // cryptsetup never read them. Then the sector with the slot's "active" field enables it in one
    // 512-byte write.
    const std::size_t active_sector = luks_key_slot_active_offset(index) / luks_sector_size;
    auto write_sector = [&](std::size_t sector) {
        const std::size_t begin = sector * luks_sector_size;
        file_->write_exact(pointer.offset + begin, {updated.data() + begin, luks_sector_size});
    };
    for (std::size_t sector = 0; sector < area.size() / luks_sector_size; ++sector) {
        const auto begin = static_cast<std::ptrdiff_t>(sector * luks_sector_size);
        if (sector != active_sector &&
            !std::equal(area.begin() + begin, area.begin() + begin + luks_sector_size, updated.begin() + begin))
            write_sector(sector);
    }
    file_->sync_data();
    fault_point("qcow2-luks-slot-written");
    write_sector(active_sector);
    file_->sync_data();
    // COMMIT POINT: LUKS key slot `index` opens with vmcrypt's secret. Nothing refers to it until the
    // record is written, and the user's slots are unchanged.
    fault_point("qcow2-luks-slot-enabled");
    log_info(name_ + ": LUKS key slot " + std::to_string(index) + " added for vmcrypt's secret");
}

}  // namespace vmcrypt::qcow2
