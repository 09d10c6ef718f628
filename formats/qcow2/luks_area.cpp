#include "formats/qcow2/luks_area.hpp"

#include "core/error.hpp"

namespace vmcrypt::qcow2 {

std::uint64_t luks_area_size()
{
    return 4040 * 512;
}

std::vector<std::uint8_t> build_qemu_luks_area(const SecureBytes& dek)
{
    (void)dek;
    // TODO: build the LUKS1 header once the LUKS header module is in; until then nothing is written.
    throw UnsupportedInput("encrypting a qcow2 image needs the LUKS header module, which this build does not have "
                           "yet; nothing was written");
}

}  // namespace vmcrypt::qcow2
