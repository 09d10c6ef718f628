#include "formats/qcow2/luks_area.hpp"

#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/luks1_layout.hpp"
#include "formats/qcow2/qemu_secret.hpp"

#include <algorithm>

namespace vmcrypt::qcow2 {

std::uint64_t luks_area_size()
{
    return luks_area_length();
}

std::vector<std::uint8_t> build_qemu_luks_area(const SecureBytes& dek)
{
    // The slot secret is 256 bits from HKDF, so QEMU's minimum iteration count (1000) costs an attacker
    // nothing useful; a higher count would only slow every QEMU start.
    SecureBytes secret = derive_qemu_secret(dek);
    return build_luks_area(dek, secret, LuksBuildParams{});
}

bool luks_area_has_record_room(std::span<const std::uint8_t> phdr)
{
    using namespace luks1_layout;
    if (phdr.size() < luks_record_offset + luks_record_capacity ||
        !std::equal(luks_magic.begin(), luks_magic.end(), phdr.begin()))
        return false;
    for (std::size_t slot = 0; slot < luks_key_slot_count; ++slot) {
        const std::size_t at = key_slots_offset + slot * key_slot_size + slot_key_material_offset;
        if (std::uint64_t{load_be32(phdr, at)} * 512 < luks_record_offset + luks_record_capacity)
            return false;
    }
    return true;
}

}  // namespace vmcrypt::qcow2
