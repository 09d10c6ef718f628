#include "formats/qcow2/luks_area.hpp"

#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/qemu_secret.hpp"

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

}  // namespace vmcrypt::qcow2
