#pragma once
// The LUKS header area vmcrypt writes into a qcow2 it encrypts: QEMU's layout with the DEK as the
// master key and key slot 0 opened by the secret derived from the DEK.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace vmcrypt::qcow2 {

// Bytes of the area (4040 sectors, QEMU's length for a 64-byte master key).
std::uint64_t luks_area_size();

// Builds the area for `dek` (the LUKS master key) with key slot 0 opened by derive_qemu_secret(dek).
std::vector<std::uint8_t> build_qemu_luks_area(const SecureBytes& dek);

// The location of the vmcrypt record when cluster 0 has no room for it (512-byte clusters): sectors 2 to 7
// of the LUKS area, between the 592-byte LUKS1 phdr and the key material of slot 0 at sector 8. LUKS1
// leaves these sectors as alignment padding, qemu-img check counts them as part of the crypto
// extension's range, and QEMU writes only the phdr and key material there (QEMU 7.2).
inline constexpr std::uint64_t luks_record_offset = 1024;   // bytes from the start of the area
inline constexpr std::uint64_t luks_record_capacity = 3072; // bytes: the record text, then zeros

// True when `phdr` (at least the first 4096 bytes of an area) starts with the LUKS magic and no key
// slot's key material starts before sector 8, so the record sectors are free.
bool luks_area_has_record_room(std::span<const std::uint8_t> phdr);

}  // namespace vmcrypt::qcow2
