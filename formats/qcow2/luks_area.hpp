#pragma once
// The LUKS header area vmcrypt writes into a qcow2 it encrypts: QEMU's layout with the DEK as the
// master key and key slot 0 opened by the secret derived from the DEK.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <vector>

namespace vmcrypt::qcow2 {

// Bytes of the area (4040 sectors, QEMU's length for a 64-byte master key).
std::uint64_t luks_area_size();

// Builds the area for `dek` (the LUKS master key) with key slot 0 opened by derive_qemu_secret(dek).
std::vector<std::uint8_t> build_qemu_luks_area(const SecureBytes& dek);

}  // namespace vmcrypt::qcow2
