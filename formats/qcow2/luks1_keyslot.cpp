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

// Writes key slot `index` of `area` as enabled for `secret`: a random salt, `iterations`, and the master key
// AF-split and encrypted with the slot key at the slot's key material offset. The offset and stripe count
// already in the phdr are kept.
void write_enabled_slot(std::span<std::uint8_t> area, std::size_t index, HashFunction hash,
                        const SecureBytes& master_key, std::span<const std::uint8_t> secret, std::uint32_t iterations)
{
    const std::size_t base = key_slots_offset + index * key_slot_size;
    const std::uint32_t stripes = load_be32(area, base + slot_stripes_offset);
    const std::size_t material_start = std::size_t{load_be32(area, base + slot_key_material_offset)} * luks_sector_size;

    const SecureBytes salt = random_bytes(luks_salt_size);
    const SecureBytes slot_key = pbkdf2_hmac(hash, secret, salt, iterations, master_key.size());
    SecureBytes material = af_split(master_key, stripes, hash);
    XtsCipher(slot_key).encrypt_units(material, 0);
    std::copy(material.begin(), material.end(), area.begin() + static_cast<std::ptrdiff_t>(material_start));

    store_be32(area, base + slot_active_offset, luks_key_enabled);
    store_be32(area, base + slot_iterations_offset, iterations);
    std::copy(salt.begin(), salt.end(), area.begin() + static_cast<std::ptrdiff_t>(base + slot_salt_offset));
}

void check_slot_arguments(std::span<const std::uint8_t> secret, std::uint32_t iterations)
{
    if (secret.empty())
        throw std::invalid_argument("LUKS: the key slot secret is empty");
    if (iterations < luks_min_iterations)
        throw std::invalid_argument("LUKS: iteration counts must be at least " + std::to_string(luks_min_iterations));
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
    check_slot_arguments(secret, params.slot_iterations);
    check_slot_arguments(secret, params.master_key_iterations);

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

    // Every slot is first written disabled but, as QEMU and cryptsetup write them, keeps its offset and
    // stripe count. Then slot 0 is enabled for the secret.
    for (std::size_t i = 0; i < luks_key_slot_count; ++i) {
        const std::size_t base = key_slots_offset + i * key_slot_size;
        const auto key_material_sector =
            static_cast<std::uint32_t>(qemu_first_key_material_sector + i * qemu_key_material_stride);
        store_be32(phdr, base + slot_active_offset, luks_key_disabled);
        store_be32(phdr, base + slot_key_material_offset, key_material_sector);
        store_be32(phdr, base + slot_stripes_offset, luks_stripes);
    }
    write_enabled_slot(area, 0, header.hash, master_key, secret, params.slot_iterations);
    return area;
}

std::size_t luks_key_slot_active_offset(std::size_t index)
{
    if (index >= luks_key_slot_count)
        throw std::invalid_argument("LUKS: key slot index " + std::to_string(index) + " is out of range");
    return key_slots_offset + index * key_slot_size + slot_active_offset;
}

std::size_t add_luks_key_slot(std::span<std::uint8_t> area, const LuksHeader& header, const SecureBytes& master_key,
                              std::span<const std::uint8_t> secret, std::uint32_t iterations, const std::string& where)
{
    check_slot_arguments(secret, iterations);
    if (!equal_constant_time(master_key_digest(header, master_key), header.mk_digest))
        throw WrongKey(where + ": the master key does not match the LUKS header's mk-digest");

    const auto free_slot = std::find_if(header.slots.begin(), header.slots.end(),
                                        [](const LuksKeySlot& slot) { return !slot.active; });
    if (free_slot == header.slots.end())
        throw WrongDiskState(where + ": no free LUKS key slot, all 8 are enabled. Disable one with qemu-img amend "
                                     "-o encrypt.state=inactive,encrypt.keyslot=N and retry");
    const auto index = static_cast<std::size_t>(free_slot - header.slots.begin());

    const std::uint64_t material_end = std::uint64_t{free_slot->key_material_offset} * luks_sector_size +
                                       std::uint64_t{header.key_bytes} * free_slot->stripes;
    if (material_end > area.size() || area.size() < luks_phdr_size)
        throw InvalidInput(where + ": invalid LUKS header: key slot " + std::to_string(index) +
                           " key material ends at byte " + std::to_string(material_end) + ", past the " +
                           std::to_string(area.size()) + "-byte LUKS area");

    write_enabled_slot(area, index, header.hash, master_key, secret, iterations);
    return index;
}

}  // namespace vmcrypt::qcow2
