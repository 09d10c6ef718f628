// Parsing and validation of the LUKS1 phdr. Every check runs before any key derivation, so a malformed
// header costs no PBKDF2 time and reports the first bad field.

#include "formats/qcow2/luks1_header.hpp"

#include "formats/qcow2/luks1_layout.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cstring>
#include <optional>

namespace vmcrypt::qcow2 {

namespace {

using namespace luks1_layout;

// A foreign header sets its own PBKDF2 cost. At an estimated 1 to 2 million SHA-256 iterations per
// second, 2^32 iterations would take about an hour per key slot. QEMU 7.2 sizes its iterations to 2
// seconds of PBKDF2 by default, so this limit only rejects headers that no ordinary tool writes.
constexpr std::uint32_t max_pbkdf2_iterations = 100'000'000;
const std::string iterations_range = "1 to " + std::to_string(max_pbkdf2_iterations) + " (vmcrypt's limit)";

// Throws InvalidInput: "WHERE: invalid LUKS header: FIELD is VALUE, expected EXPECTED".
[[noreturn]] void throw_invalid(const std::string& where, const std::string& field, const std::string& value,
                                const std::string& expected)
{
    throw InvalidInput(where + ": invalid LUKS header: " + field + " is " + value + ", expected " + expected);
}

[[noreturn]] void throw_unsupported(const std::string& where, const std::string& field,
                                    const std::string& value, const std::string& supported)
{
    throw UnsupportedInput(where + ": unsupported LUKS header: " + field + " is " + value + ", vmcrypt handles " +
                           supported);
}

// A NUL-terminated string field of `size` bytes.
std::string read_string(std::span<const std::uint8_t> phdr, std::size_t offset, std::size_t size,
                        const std::string& where, const char* field)
{
    const auto* begin = reinterpret_cast<const char*>(phdr.data() + offset);
    const std::size_t length = strnlen(begin, size);
    if (length == size)
        throw_invalid(where, field, "not NUL-terminated", "a string of at most " + std::to_string(size - 1) + " bytes");
    return std::string(begin, length);
}

std::string quoted(const std::string& text)
{
    return "\"" + text + "\"";
}

std::optional<HashFunction> hash_from_spec(const std::string& spec)
{
    if (spec == "sha1")
        return HashFunction::sha1;
    if (spec == "sha256")
        return HashFunction::sha256;
    if (spec == "sha512")
        return HashFunction::sha512;
    return std::nullopt;
}

std::string slot_field(std::size_t slot, const char* field)
{
    return "key slot " + std::to_string(slot) + " " + field;
}

// The sectors of key material a slot occupies: key_bytes * stripes bytes, rounded up to whole sectors.
std::uint64_t key_material_sectors(std::uint32_t key_bytes, std::uint32_t stripes)
{
    const std::uint64_t bytes = std::uint64_t{key_bytes} * stripes;
    return (bytes + luks_sector_size - 1) / luks_sector_size;
}

void parse_strings(std::span<const std::uint8_t> phdr, LuksHeader& header, const std::string& where)
{
    header.cipher_name = read_string(phdr, cipher_name_offset, name_field_size, where, "cipher-name");
    header.cipher_mode = read_string(phdr, cipher_mode_offset, name_field_size, where, "cipher-mode");
    header.hash_spec = read_string(phdr, hash_spec_offset, name_field_size, where, "hash-spec");
    header.uuid = read_string(phdr, uuid_offset, uuid_field_size, where, "uuid");

    if (header.cipher_name.empty())
        throw_invalid(where, "cipher-name", "empty", "a cipher name such as \"aes\"");
    if (header.cipher_name != "aes")
        throw_unsupported(where, "cipher-name", quoted(header.cipher_name), "only \"aes\", QEMU's default");
    if (header.cipher_mode.empty())
        throw_invalid(where, "cipher-mode", "empty", "a mode such as \"xts-plain64\"");
    if (header.cipher_mode != "xts-plain64")
        throw_unsupported(where, "cipher-mode", quoted(header.cipher_mode), "only \"xts-plain64\", QEMU's default");
    const auto hash = hash_from_spec(header.hash_spec);
    if (!hash)
        throw_unsupported(where, "hash-spec", quoted(header.hash_spec), "\"sha256\", \"sha1\" and \"sha512\"");
    header.hash = *hash;
}

void parse_key_slot(std::span<const std::uint8_t> phdr, std::size_t index, LuksKeySlot& slot,
                    const std::string& where)
{
    const std::size_t base = key_slots_offset + index * key_slot_size;
    const std::uint32_t state = load_be32(phdr, base + slot_active_offset);
    if (state != luks_key_enabled && state != luks_key_disabled)
        throw_invalid(where, slot_field(index, "active"), hex32(state),
                      hex32(luks_key_enabled) + " (enabled) or " + hex32(luks_key_disabled) + " (disabled)");
    slot.active = state == luks_key_enabled;
    slot.iterations = load_be32(phdr, base + slot_iterations_offset);
    std::memcpy(slot.salt.data(), phdr.data() + base + slot_salt_offset, luks_salt_size);
    slot.key_material_offset = load_be32(phdr, base + slot_key_material_offset);
    slot.stripes = load_be32(phdr, base + slot_stripes_offset);

    if (slot.active && (slot.iterations == 0 || slot.iterations > max_pbkdf2_iterations))
        throw_invalid(where, slot_field(index, "iterations"), std::to_string(slot.iterations),
                      iterations_range + " for an enabled key slot");
    if (slot.stripes != luks_stripes)
        throw_invalid(where, slot_field(index, "stripes"), std::to_string(slot.stripes),
                      std::to_string(luks_stripes));
}

// Each slot's key material must start after the phdr, end by the payload offset and the end of the
// area, and not overlap another slot's. QEMU and cryptsetup check the disabled slots too.
void check_key_material_layout(const LuksHeader& header, std::size_t area_size, const std::string& where)
{
    const std::uint64_t phdr_sectors = (luks_phdr_size + luks_sector_size - 1) / luks_sector_size;
    const std::uint64_t area_sectors = area_size / luks_sector_size;
    const std::uint64_t length = key_material_sectors(header.key_bytes, luks_stripes);

    for (std::size_t i = 0; i < luks_key_slot_count; ++i) {
        const std::uint64_t start = header.slots[i].key_material_offset;
        const std::string field = slot_field(i, "key-material-offset");
        if (start < phdr_sectors)
            throw_invalid(where, field, std::to_string(start),
                          "at least " + std::to_string(phdr_sectors) + " sectors, after the phdr");
        if (start + length > header.payload_offset)
            throw_invalid(where, field, std::to_string(start),
                          "key material (" + std::to_string(length) + " sectors) that ends by payload-offset " +
                              std::to_string(header.payload_offset));
        if (start + length > area_sectors)
            throw_invalid(where, field, std::to_string(start),
                          "key material (" + std::to_string(length) + " sectors) inside the " +
                              std::to_string(area_size) + "-byte LUKS area");
        for (std::size_t j = 0; j < i; ++j) {
            const std::uint64_t other = header.slots[j].key_material_offset;
            if (start < other + length && other < start + length)
                throw_invalid(where, field, std::to_string(start),
                              "key material clear of key slot " + std::to_string(j) + " at sector " +
                                  std::to_string(other));
        }
    }
}

}  // namespace

std::uint64_t luks_area_length()
{
    return std::uint64_t{qemu_payload_offset} * luks_sector_size;
}

std::size_t LuksHeader::active_slot_count() const
{
    return static_cast<std::size_t>(
        std::count_if(slots.begin(), slots.end(), [](const LuksKeySlot& slot) { return slot.active; }));
}

LuksHeader parse_luks_header(std::span<const std::uint8_t> area, const std::string& where)
{
    if (area.size() < luks_phdr_size)
        throw InvalidInput(where + ": invalid LUKS header: the area is " + std::to_string(area.size()) +
                           " bytes, shorter than the " + std::to_string(luks_phdr_size) + "-byte LUKS1 header");
    const auto phdr = area.first(luks_phdr_size);

    if (!std::equal(luks_magic.begin(), luks_magic.end(), phdr.begin()))
        throw_invalid(where, "magic", hex_bytes(phdr.first(luks_magic.size())), "4c554b53babe (\"LUKS\\xba\\xbe\")");

    LuksHeader header;
    header.version = load_be16(phdr, version_offset);
    if (header.version != 1)
        throw_unsupported(where, "version", std::to_string(header.version),
                          "only LUKS1 (version 1), the only version QEMU writes into qcow2");

    parse_strings(phdr, header, where);

    header.payload_offset = load_be32(phdr, payload_offset_offset);
    header.key_bytes = load_be32(phdr, key_bytes_offset);
    if (header.key_bytes == 0 || header.key_bytes > max_key_bytes)
        throw_invalid(where, "key-bytes", std::to_string(header.key_bytes),
                      "1 to " + std::to_string(max_key_bytes));
    if (header.key_bytes != luks_master_key_size)
        throw_unsupported(where, "key-bytes", std::to_string(header.key_bytes),
                          "only 64 (AES-256-XTS, QEMU's default)");

    std::memcpy(header.mk_digest.data(), phdr.data() + mk_digest_offset, luks_digest_size);
    std::memcpy(header.mk_digest_salt.data(), phdr.data() + mk_digest_salt_offset, luks_salt_size);
    header.mk_digest_iterations = load_be32(phdr, mk_digest_iterations_offset);
    if (header.mk_digest_iterations == 0 || header.mk_digest_iterations > max_pbkdf2_iterations)
        throw_invalid(where, "mk-digest-iter", std::to_string(header.mk_digest_iterations), iterations_range);

    for (std::size_t i = 0; i < luks_key_slot_count; ++i)
        parse_key_slot(phdr, i, header.slots[i], where);

    check_key_material_layout(header, area.size(), where);
    return header;
}

}  // namespace vmcrypt::qcow2
