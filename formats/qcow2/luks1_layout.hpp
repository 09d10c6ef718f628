#pragma once
// Byte offsets of the LUKS1 phdr fields (big-endian) and QEMU's key material layout; internal to the
// LUKS1 header code.

#include "formats/qcow2/luks1_header.hpp"

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace vmcrypt::qcow2::luks1_layout {

inline constexpr std::array<std::uint8_t, 6> luks_magic = {'L', 'U', 'K', 'S', 0xba, 0xbe};

inline constexpr std::size_t version_offset = 6;
inline constexpr std::size_t cipher_name_offset = 8;
inline constexpr std::size_t cipher_mode_offset = 40;
inline constexpr std::size_t hash_spec_offset = 72;
inline constexpr std::size_t name_field_size = 32;
inline constexpr std::size_t payload_offset_offset = 104;
inline constexpr std::size_t key_bytes_offset = 108;
inline constexpr std::size_t mk_digest_offset = 112;
inline constexpr std::size_t mk_digest_salt_offset = 132;
inline constexpr std::size_t mk_digest_iterations_offset = 164;
inline constexpr std::size_t uuid_offset = 168;
inline constexpr std::size_t uuid_field_size = 40;
inline constexpr std::size_t key_slots_offset = 208;
inline constexpr std::size_t key_slot_size = 48;

// Offsets inside a 48-byte key slot.
inline constexpr std::size_t slot_active_offset = 0;
inline constexpr std::size_t slot_iterations_offset = 4;
inline constexpr std::size_t slot_salt_offset = 8;
inline constexpr std::size_t slot_key_material_offset = 40;
inline constexpr std::size_t slot_stripes_offset = 44;

static_assert(key_slots_offset + luks_key_slot_count * key_slot_size == luks_phdr_size);

// An upper bound on key-bytes: no cipher a LUKS1 header names takes a longer key, and it keeps the key
// material of a crafted header (key-bytes * 4000) small.
inline constexpr std::uint32_t max_key_bytes = 512;

// QEMU's layout for a 64-byte key (crypto/block-luks.c in QEMU 7.2): slot i's key material starts at
// sector 8 + 504 * i (500 sectors rounded up to a multiple of 8), and the payload at sector 4040.
inline constexpr std::uint32_t qemu_first_key_material_sector = 8;
inline constexpr std::uint32_t qemu_key_material_stride = 504;
inline constexpr std::uint32_t qemu_payload_offset =
    qemu_first_key_material_sector + luks_key_slot_count * qemu_key_material_stride;

inline std::uint16_t load_be16(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return static_cast<std::uint16_t>((bytes[offset] << 8) | bytes[offset + 1]);
}

inline std::uint32_t load_be32(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return (std::uint32_t{bytes[offset]} << 24) | (std::uint32_t{bytes[offset + 1]} << 16) |
           (std::uint32_t{bytes[offset + 2]} << 8) | std::uint32_t{bytes[offset + 3]};
}

inline void store_be16(std::span<std::uint8_t> bytes, std::size_t offset, std::uint16_t value)
{
    bytes[offset] = static_cast<std::uint8_t>(value >> 8);
    bytes[offset + 1] = static_cast<std::uint8_t>(value);
}

inline void store_be32(std::span<std::uint8_t> bytes, std::size_t offset, std::uint32_t value)
{
    for (std::size_t i = 0; i < 4; ++i)
        bytes[offset + i] = static_cast<std::uint8_t>(value >> (24 - 8 * i));
}

inline std::string hex_bytes(std::span<const std::uint8_t> bytes)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string text;
    for (const std::uint8_t byte : bytes) {
        text += digits[byte >> 4];
        text += digits[byte & 0xf];
    }
    return text;
}

inline std::string hex32(std::uint32_t value)
{
    const std::array<std::uint8_t, 4> bytes = {static_cast<std::uint8_t>(value >> 24),
                                               static_cast<std::uint8_t>(value >> 16),
                                               static_cast<std::uint8_t>(value >> 8), static_cast<std::uint8_t>(value)};
    return "0x" + hex_bytes(bytes);
}

}  // namespace vmcrypt::qcow2::luks1_layout
