#pragma once
// The LUKS1 header inside a LUKS-encrypted qcow2 (crypt method 2), as QEMU lays it out: the FDE header
// extension (0x0537be77) points at a cluster-aligned area of the image file that holds a plain LUKS1
// partition header ("phdr", 592 bytes, big-endian) followed by the key material of 8 key slots. Key
// material offsets count 512-byte sectors from the start of the area. The payload offset in the phdr only
// sets the area's length; the qcow2 data clusters hold the payload, encrypted with AES-256-XTS under the
// master key with the tweak "host offset / 512".
//
// The field names in error messages are those of the LUKS1 on-disk format specification (cryptsetup's
// "LUKS1 On-Disk Format Specification", version 1.2.3): magic, version, cipher-name, cipher-mode,
// hash-spec, payload-offset, key-bytes, mk-digest-iter, uuid, and per key slot active, iterations,
// key-material-offset and stripes.

#include "core/crypto/hash_function.hpp"
#include "core/crypto/secure.hpp"

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

inline constexpr std::size_t luks_sector_size = 512;
inline constexpr std::size_t luks_phdr_size = 592;
inline constexpr std::size_t luks_key_slot_count = 8;
inline constexpr std::size_t luks_salt_size = 32;
inline constexpr std::size_t luks_digest_size = 20;
// The stripe count of every key slot; QEMU and cryptsetup accept no other.
inline constexpr std::uint32_t luks_stripes = 4000;
// The only master-key length vmcrypt handles: AES-256-XTS, two 256-bit keys, which is QEMU's default and
// vmcrypt's DEK.
inline constexpr std::size_t luks_master_key_size = 64;
// Key slot states (the "active" field).
inline constexpr std::uint32_t luks_key_enabled = 0x00AC71F3;
inline constexpr std::uint32_t luks_key_disabled = 0x0000DEAD;

// The length of QEMU's area for a 64-byte master key: 4040 sectors (8 for the phdr, then 8 key slots of
// 500 sectors of key material each, rounded up to 504), 2068480 bytes. It is also the payload offset
// that build_luks_area writes.
std::uint64_t luks_area_length();

struct LuksKeySlot {
    bool active = false;
    std::uint32_t iterations = 0;
    std::array<std::uint8_t, luks_salt_size> salt{};
    std::uint32_t key_material_offset = 0;  // in 512-byte sectors from the start of the area
    std::uint32_t stripes = 0;
};

// A phdr that parse_luks_header validated.
struct LuksHeader {
    std::uint16_t version = 0;
    std::string cipher_name;  // "aes"
    std::string cipher_mode;  // "xts-plain64"
    std::string hash_spec;    // "sha256", "sha1" or "sha512"
    HashFunction hash = HashFunction::sha256;
    std::uint32_t payload_offset = 0;  // in 512-byte sectors
    std::uint32_t key_bytes = 0;
    std::array<std::uint8_t, luks_digest_size> mk_digest{};
    std::array<std::uint8_t, luks_salt_size> mk_digest_salt{};
    std::uint32_t mk_digest_iterations = 0;
    std::string uuid;
    std::array<LuksKeySlot, luks_key_slot_count> slots{};

    std::size_t active_slot_count() const;
};

// Parses and validates the phdr at the start of `area` (the bytes the FDE extension points at, as long as
// its length field says). Checks the fields that QEMU 7.2 checks: the magic, version 1,
// NUL-terminated strings, the key size, non-zero iteration counts, each slot's state marker and stripe
// count, and that each slot's key material lies after the phdr, before the payload offset, inside `area`
// and clear of the other slots. Throws InvalidInput naming `where` and the field for a malformed header,
// and UnsupportedInput, naming the value found, for a valid LUKS1 header with anything but aes,
// xts-plain64 and a 64-byte key, or with a hash other than sha1, sha256 and sha512.
LuksHeader parse_luks_header(std::span<const std::uint8_t> area, const std::string& where);

// Tries every active key slot with `secret` (the bytes QEMU's secret object holds, such as a passphrase)
// and returns the 64-byte master key that the first matching slot opens, checked against mk-digest.
// Throws WrongKey when no active slot opens, and InvalidInput when `area` is shorter than the header's
// key material requires (an area other than the one parsed).
SecureBytes unlock_luks(const LuksHeader& header, std::span<const std::uint8_t> area,
                        std::span<const std::uint8_t> secret, const std::string& where);

// The lowest iteration count build_luks_area writes: the minimum with which QEMU 7.2 creates key slots.
inline constexpr std::uint32_t luks_min_iterations = 1000;

struct LuksBuildParams {
    // PBKDF2 iterations of key slot 0. A secret from derive_qemu_secret has 256 bits of entropy, so more
    // iterations add no strength. Use more for a human passphrase.
    std::uint32_t slot_iterations = luks_min_iterations;
    // PBKDF2 iterations of the master-key digest.
    std::uint32_t master_key_iterations = luks_min_iterations;
};

// Builds a complete area of luks_area_length() bytes for `master_key` (64 bytes, the vmcrypt DEK). The
// phdr has QEMU's defaults (aes, xts-plain64, sha256, payload offset 4040) with random salts and UUID.
// Key slot 0 opens with `secret`, slots 1 to 7 are disabled at QEMU's offsets, and the rest is zero.
// Throws std::invalid_argument on a master key of another length, an empty secret, or iteration counts
// below luks_min_iterations.
std::vector<std::uint8_t> build_luks_area(const SecureBytes& master_key, std::span<const std::uint8_t> secret,
                                          const LuksBuildParams& params = {});

// Enables the first disabled key slot of a parsed area for `secret`, with the header's hash, `iterations`
// PBKDF2 rounds and a random salt, and returns its index. `master_key` must match mk-digest (from
// unlock_luks). Only `area` in memory changes: the slot's key material sectors and its 48 bytes in the
// phdr. To persist the change crash-safely, write the key material sectors first and the phdr sector
// last, because a disabled slot's key material is never read. Throws WrongKey when master_key does not
// match, WrongDiskState when all 8 slots are enabled, and std::invalid_argument on an empty secret or
// fewer than luks_min_iterations iterations.
// Byte offset in the area of the "active" field of key slot `index` (below luks_key_slot_count). A slot
// enabled by add_luks_key_slot() reaches the disk crash-safely when every other changed sector is written
// and synced before the sector that contains this field: until then the slot stays disabled.
std::size_t luks_key_slot_active_offset(std::size_t index);

std::size_t add_luks_key_slot(std::span<std::uint8_t> area, const LuksHeader& header, const SecureBytes& master_key,
                              std::span<const std::uint8_t> secret, std::uint32_t iterations,
                              const std::string& where);

}  // namespace vmcrypt::qcow2
