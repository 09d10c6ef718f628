// LUKS1 key slots: opening them with a secret, and building QEMU's area around a given master key.
//
// A key slot stores the master key AF-split into 4000 stripes and encrypted with the slot key,
// PBKDF2(secret, slot salt, slot iterations), under the header's cipher (AES-256-XTS, 512-byte sectors,
// plain64 tweaks counted from the slot's first sector as 0). The master key is right when
// PBKDF2(master key, mk-digest-salt, mk-digest-iter) matches the 20-byte mk-digest.

#include "formats/qcow2/luks1_header.hpp"

#include "formats/qcow2/luks1_layout.hpp"

#include "core/crypto/af_split.hpp"
#include "core/crypto/mac.hpp"
#include "core/crypto/pbkdf2.hpp"
#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"
#include "core/error.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace vmcrypt::qcow2 {

namespace {

using namespace luks1_layout;

SecureBytes master_key_digest(const LuksHeader& header, std::span<const std::uint8_t> master_key)
{
    return pbkdf2_hmac(header.hash, master_key, header.mk_digest_salt, header.mk_digest_iterations,
                       luks_digest_size);
}

// Opens one key slot; returns the candidate master key (right only if its digest matches).
SecureBytes open_key_slot(const LuksHeader& header, const LuksKeySlot& slot, std::span<const std::uint8_t> area,
                          std::span<const std::uint8_t> secret)
{
    const std::size_t material_size = std::size_t{header.key_bytes} * slot.stripes;
    const std::size_t start = std::size_t{slot.key_material_offset} * luks_sector_size;

    const SecureBytes slot_key = pbkdf2_hmac(header.hash, secret, slot.salt, slot.iterations, header.key_bytes);
    SecureBytes material(area.begin() + static_cast<std::ptrdiff_t>(start),
                         area.begin() + static_cast<std::ptrdiff_t>(start + material_size));
    const XtsCipher cipher(slot_key);
    cipher.decrypt_units(material, 0);
    return af_merge(material, header.key_bytes, slot.stripes, header.hash);
}

// A version 4 (random) UUID in its 36-character text form.
std::string random_uuid()
{
    SecureBytes bytes = random_bytes(16);
    bytes[6] = static_cast<std::uint8_t>((bytes[6] & 0x0f) | 0x40);
    bytes[8] = static_cast<std::uint8_t>((bytes[8] & 0x3f) | 0x80);
    const std::string hex = hex_bytes(bytes);
    return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" + hex.substr(16, 4) + "-" +
           hex.substr(20, 12);
}

void store_string(std::span<std::uint8_t> phdr, std::size_t offset, const std::string& text)
{
    std::memcpy(phdr.data() + offset, text.data(), text.size());
}

}  // namespace

SecureBytes unlock_luks(const LuksHeader& header, std::span<const std::uint8_t> area,
                        std::span<const std::uint8_t> secret, const std::string& where)
{
    std::size_t tried = 0;
    for (std::size_t i = 0; i < luks_key_slot_count; ++i) {
        const LuksKeySlot& slot = header.slots[i];
        if (!slot.active)
            continue;
        const std::uint64_t end =
            std::uint64_t{slot.key_material_offset} * luks_sector_size + std::uint64_t{header.key_bytes} * slot.stripes;
        if (end > area.size())
            throw InvalidInput(where + ": invalid LUKS header: key slot " + std::to_string(i) +
                               " key material ends at byte " + std::to_string(end) + ", past the " +
                               std::to_string(area.size()) + "-byte LUKS area");

        ++tried;
        SecureBytes candidate = open_key_slot(header, slot, area, secret);
        if (equal_constant_time(master_key_digest(header, candidate), header.mk_digest))
            return candidate;
    }

    if (tried == 0)
        throw WrongKey(where + ": the LUKS header has no enabled key slot, so no secret can unlock it");
    throw WrongKey(where + ": the secret opens none of the " + std::to_string(tried) +
                   " enabled LUKS key slots; check the passphrase or secret");
}

std::vector<std::uint8_t> build_luks_area(const SecureBytes& master_key, std::span<const std::uint8_t> secret,
                                          const LuksBuildParams& params)
{
    if (master_key.size() != luks_master_key_size)
        throw std::invalid_argument("LUKS: master key of " + std::to_string(master_key.size()) +
                                    " bytes, expected " + std::to_string(luks_master_key_size));
    if (secret.empty())
        throw std::invalid_argument("LUKS: the key slot secret is empty");
    if (params.slot_iterations < luks_min_iterations || params.master_key_iterations < luks_min_iterations)
        throw std::invalid_argument("LUKS: iteration counts must be at least " + std::to_string(luks_min_iterations));

    LuksHeader header;
    header.version = 1;
    header.cipher_name = "aes";
    header.cipher_mode = "xts-plain64";
    header.hash_spec = "sha256";
    header.hash = HashFunction::sha256;
    header.payload_offset = qemu_payload_offset;
    header.key_bytes = luks_master_key_size;
    header.mk_digest_iterations = params.master_key_iterations;
    const SecureBytes mk_digest_salt = random_bytes(luks_salt_size);
    std::copy(mk_digest_salt.begin(), mk_digest_salt.end(), header.mk_digest_salt.begin());
    const SecureBytes mk_digest = master_key_digest(header, master_key);
    std::copy(mk_digest.begin(), mk_digest.end(), header.mk_digest.begin());
    header.uuid = random_uuid();

    std::vector<std::uint8_t> area(luks_area_length(), 0);
    const std::span<std::uint8_t> phdr(area.data(), luks_phdr_size);
    std::copy(luks_magic.begin(), luks_magic.end(), phdr.begin());
    store_be16(phdr, version_offset, header.version);
    store_string(phdr, cipher_name_offset, header.cipher_name);
    store_string(phdr, cipher_mode_offset, header.cipher_mode);
    store_string(phdr, hash_spec_offset, header.hash_spec);
    store_be32(phdr, payload_offset_offset, header.payload_offset);
    store_be32(phdr, key_bytes_offset, header.key_bytes);
    std::copy(header.mk_digest.begin(), header.mk_digest.end(), phdr.begin() + mk_digest_offset);
    std::copy(header.mk_digest_salt.begin(), header.mk_digest_salt.end(), phdr.begin() + mk_digest_salt_offset);
    store_be32(phdr, mk_digest_iterations_offset, header.mk_digest_iterations);
    store_string(phdr, uuid_offset, header.uuid);

    // Slots 1 to 7 are disabled but, as QEMU and cryptsetup write them, keep their offset and stripe count.
    for (std::size_t i = 0; i < luks_key_slot_count; ++i) {
        const std::size_t base = key_slots_offset + i * key_slot_size;
        const auto key_material_sector = static_cast<std::uint32_t>(qemu_first_key_material_sector + i * qemu_key_material_stride);
        store_be32(phdr, base + slot_active_offset, i == 0 ? luks_key_enabled : luks_key_disabled);
        store_be32(phdr, base + slot_key_material_offset, key_material_sector);
        store_be32(phdr, base + slot_stripes_offset, luks_stripes);
    }

    // Slot 0: its salt and iterations, then the master key split, encrypted with the slot key, in place.
    const SecureBytes slot_salt = random_bytes(luks_salt_size);
    std::copy(slot_salt.begin(), slot_salt.end(), phdr.begin() + key_slots_offset + slot_salt_offset);
    store_be32(phdr, key_slots_offset + slot_iterations_offset, params.slot_iterations);

    const SecureBytes slot_key =
        pbkdf2_hmac(HashFunction::sha256, secret, slot_salt, params.slot_iterations, luks_master_key_size);
    SecureBytes material = af_split(master_key, luks_stripes, HashFunction::sha256);
    XtsCipher(slot_key).encrypt_units(material, 0);
    std::copy(material.begin(), material.end(),
              area.begin() + std::size_t{qemu_first_key_material_sector} * luks_sector_size);
    return area;
}

}  // namespace vmcrypt::qcow2
