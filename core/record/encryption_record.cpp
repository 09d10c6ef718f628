#include "core/record/encryption_record.hpp"

#include "core/crypto/kdf.hpp"
#include "core/crypto/key_wrap.hpp"
#include "core/crypto/mac.hpp"
#include "core/error.hpp"

#include <botan/base64.h>
#include <botan/exceptn.h>

#include <algorithm>
#include <map>

namespace vmcrypt {

namespace {

constexpr std::string_view mac_label = "vmcrypt record mac v1";
constexpr std::string_view mac_prefix = "hmac-sha256:";
constexpr std::string_view previous_dek_label = "vmcrypt previous dek v1";
constexpr std::string_view key_slot_prefix = "keySlot.";

// Parses the <id> of "keySlot.<id>": canonical decimal (no leading zero) below max_key_slots.
std::optional<std::uint32_t> parse_slot_id(const std::string& name)
{
    if (name.rfind(key_slot_prefix, 0) != 0)
        return std::nullopt;
    std::string digits = name.substr(key_slot_prefix.size());
    if (digits.empty() || digits.size() > 2 || (digits.size() > 1 && digits[0] == '0'))
        return std::nullopt;
    for (char c : digits)
        if (c < '0' || c > '9')
            return std::nullopt;
    std::uint32_t id = static_cast<std::uint32_t>(std::stoul(digits));
    if (id >= max_key_slots)
        return std::nullopt;
    return id;
}

RecordFields fields_without_mac(const EncryptionRecord& record)
{
    RecordFields fields;
    fields.emplace_back("version", std::to_string(record_version));
    fields.emplace_back("state", to_string(record.state));
    fields.emplace_back("cipher", record.cipher);
    fields.emplace_back("dekBits", std::to_string(record.dek_bits));
    fields.emplace_back("unitSize", std::to_string(record.unit_size));
    fields.emplace_back("tweak", record.tweak);
    fields.emplace_back("zeroUnits", record.zero_units);
    std::vector<std::uint32_t> ids = record.slot_ids();
    std::vector<std::size_t> order(ids.size());
    for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ids[a] < ids[b]; });
    for (std::size_t i : order)
        fields.emplace_back(std::string(key_slot_prefix) + std::to_string(ids[i]), record.key_slots[i].to_text());
    if (!record.previous_dek.empty())
        fields.emplace_back("previousDek", Botan::base64_encode(record.previous_dek.data(), record.previous_dek.size()));
    if (!record.data_check.empty())
        fields.emplace_back("dataCheck", record.data_check);
    return fields;
}

}  // namespace

std::string to_string(RecordState state)
{
    switch (state) {
    case RecordState::encrypting:
        return "encrypting";
    case RecordState::encrypted:
        return "encrypted";
    case RecordState::decrypting:
        return "decrypting";
    case RecordState::rekeying:
        return "rekeying";
    }
    return "unknown";
}

EncryptionRecord EncryptionRecord::from_fields(const RecordFields& fields, const std::string& where)
{
    std::map<std::string, std::string> by_name;
    for (const auto& [name, value] : fields)
        if (!by_name.emplace(name, value).second)
            throw InvalidInput(where + ": ddb.vmcrypt." + name + " appears twice");

    auto take = [&](const std::string& name) -> std::string {
        auto it = by_name.find(name);
        if (it == by_name.end())
            throw InvalidInput(where + ": encryption record field " + name + " is missing");
        std::string value = it->second;
        by_name.erase(it);
        return value;
    };

    EncryptionRecord record;
    std::string version = take("version");
    if (version != std::to_string(record_version))
        throw UnsupportedInput(where + ": encryption record version " + version +
                               " is not supported by this vmcrypt (it reads version 1); upgrade vmcrypt");

    std::string state = take("state");
    if (state == "encrypting")
        record.state = RecordState::encrypting;
    else if (state == "encrypted")
        record.state = RecordState::encrypted;
    else if (state == "decrypting")
        record.state = RecordState::decrypting;
    else if (state == "rekeying")
        record.state = RecordState::rekeying;
    else
        throw InvalidInput(where + ": encryption record state \"" + state +
                           "\" is not one of encrypting, encrypted, decrypting, rekeying");

    record.cipher = take("cipher");
    const std::string dek_bits = take("dekBits");
    if (record.cipher == legacy_record_cipher) {
        // A legacy qcow AES image that vmcrypt decrypts: its 16-byte password key is the DEK meanwhile.
        if (record.state != RecordState::decrypting)
            throw InvalidInput(where + ": cipher " + record.cipher + " is only valid while a legacy qcow AES image "
                               "is decrypted, but the state is " + state);
        if (dek_bits != "128")
            throw UnsupportedInput(where + ": dekBits must be 128 for " + record.cipher);
        record.dek_bits = 128;
    } else if (record.cipher != record_cipher) {
        throw UnsupportedInput(where + ": cipher \"" + record.cipher + "\" is not supported (expected aes-xts-plain64)");
    } else if (dek_bits != "512") {
        throw UnsupportedInput(where + ": dekBits must be 512 (AES-256-XTS)");
    }
    if (take("unitSize") != "512")
        throw UnsupportedInput(where + ": unitSize must be 512");
    record.unit_size = 512;
    record.tweak = take("tweak");
    if (record.tweak != "guest-sector" && record.tweak != "host-sector")
        throw UnsupportedInput(where + ": tweak rule \"" + record.tweak + "\" is not supported");
    record.zero_units = take("zeroUnits");
    if (record.zero_units != "plain" && record.zero_units != "encrypted")
        throw UnsupportedInput(where + ": zeroUnits \"" + record.zero_units + "\" is not supported");

    // Slot ids may have gaps (a removed slot leaves one); by_name iterates them in name order.
    std::vector<std::pair<std::uint32_t, std::string>> slot_names;
    for (const auto& [name, value] : by_name)
        if (std::optional<std::uint32_t> id = parse_slot_id(name))
            slot_names.emplace_back(*id, name);
    std::sort(slot_names.begin(), slot_names.end());
    for (const auto& [id, name] : slot_names) {
        record.key_slots.push_back(KeySlot::parse(take(name), where + ": ddb.vmcrypt." + name));
        record.key_slot_ids.push_back(id);
    }
    if (record.key_slots.empty())
        throw InvalidInput(where + ": encryption record has no key slot (ddb.vmcrypt.keySlot.0)");

    if (by_name.count("previousDek")) {
        if (record.state != RecordState::rekeying)
            throw InvalidInput(where + ": ddb.vmcrypt.previousDek is present but the state is " + state +
                               "; it belongs only to a disk in the middle of a deep rekey");
        try {
            Botan::secure_vector<std::uint8_t> raw = Botan::base64_decode(take("previousDek"));
            record.previous_dek.assign(raw.begin(), raw.end());
        } catch (const Botan::Exception&) {
            throw InvalidInput(where + ": ddb.vmcrypt.previousDek is not valid base64");
        }
        if (record.previous_dek.size() != 72)
            throw InvalidInput(where + ": ddb.vmcrypt.previousDek is " + std::to_string(record.previous_dek.size()) +
                               " bytes, expected 72 (a 64-byte DEK wrapped with RFC 3394)");
    } else if (record.state == RecordState::rekeying) {
        throw InvalidInput(where + ": the state is rekeying but ddb.vmcrypt.previousDek is missing");
    }

    if (by_name.count("dataCheck")) {
        record.data_check = take("dataCheck");
        if (record.data_check.size() != 44)
            throw InvalidInput(where + ": ddb.vmcrypt.dataCheck must be 44 base64 characters");
    }

    std::string mac = take("mac");
    if (mac.rfind(mac_prefix, 0) != 0)
        throw UnsupportedInput(where + ": ddb.vmcrypt.mac must start with hmac-sha256:");
    try {
        Botan::secure_vector<std::uint8_t> raw = Botan::base64_decode(mac.substr(mac_prefix.size()));
        record.mac.assign(raw.begin(), raw.end());
    } catch (const Botan::Exception&) {
        throw InvalidInput(where + ": ddb.vmcrypt.mac is not valid base64");
    }

    if (!by_name.empty())
        throw InvalidInput(where + ": unknown encryption record field ddb.vmcrypt." + by_name.begin()->first);
    return record;
}

RecordFields EncryptionRecord::to_fields() const
{
    RecordFields fields = fields_without_mac(*this);
    fields.emplace_back("mac", std::string(mac_prefix) + Botan::base64_encode(mac.data(), mac.size()));
    return fields;
}

std::vector<std::uint8_t> EncryptionRecord::compute_mac(const SecureBytes& dek) const
{
    SecureBytes key = hkdf_sha256(dek, mac_label, 32);
    std::string text = fields_to_text(fields_without_mac(*this));
    Mac mac_value = hmac_sha256(key, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    return {mac_value.begin(), mac_value.end()};
}

std::vector<std::uint32_t> EncryptionRecord::slot_ids() const
{
    std::vector<std::uint32_t> ids(key_slot_ids.begin(),
                                   key_slot_ids.begin() + static_cast<std::ptrdiff_t>(
                                                              std::min(key_slot_ids.size(), key_slots.size())));
    std::uint32_t next = 0;
    for (std::uint32_t id : ids)
        next = std::max(next, id + 1);
    while (ids.size() < key_slots.size())
        ids.push_back(next++);
    return ids;
}

std::uint32_t EncryptionRecord::add_key_slot(KeySlot slot)
{
    std::vector<std::uint32_t> ids = slot_ids();
    std::uint32_t id = 0;
    while (std::find(ids.begin(), ids.end(), id) != ids.end())
        ++id;
    if (id >= max_key_slots)
        throw InvalidInput("the encryption record already has " + std::to_string(max_key_slots) +
                           " key slots, the maximum; remove one first");
    key_slots.push_back(std::move(slot));
    ids.push_back(id);
    key_slot_ids = std::move(ids);
    return id;
}

bool EncryptionRecord::remove_key_slot(std::uint32_t id)
{
    std::optional<std::size_t> position = slot_position(id);
    if (!position)
        return false;
    std::vector<std::uint32_t> ids = slot_ids();
    key_slots.erase(key_slots.begin() + static_cast<std::ptrdiff_t>(*position));
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(*position));
    key_slot_ids = std::move(ids);
    return true;
}

std::optional<std::size_t> EncryptionRecord::slot_position(std::uint32_t id) const
{
    std::vector<std::uint32_t> ids = slot_ids();
    auto it = std::find(ids.begin(), ids.end(), id);
    if (it == ids.end())
        return std::nullopt;
    return static_cast<std::size_t>(it - ids.begin());
}

void EncryptionRecord::wrap_previous_dek(const SecureBytes& previous, const SecureBytes& dek)
{
    previous_dek = wrap_key(hkdf_sha256(dek, previous_dek_label, kek_size), previous);
}

SecureBytes EncryptionRecord::unwrap_previous_dek(const SecureBytes& dek, const std::string& where) const
{
    if (previous_dek.empty())
        throw InvalidInput(where + ": ddb.vmcrypt.previousDek is missing, so the deep rekey cannot be finished");
    try {
        return unwrap_key(hkdf_sha256(dek, previous_dek_label, kek_size), previous_dek);
    } catch (const UnwrapFailed&) {
        throw InvalidInput(where + ": ddb.vmcrypt.previousDek does not unwrap with the current DEK: the record was "
                           "changed; restore the original descriptor");
    }
}

void EncryptionRecord::seal(const SecureBytes& dek)
{
    mac = compute_mac(dek);
}

void EncryptionRecord::verify_mac(const SecureBytes& dek, const std::string& where) const
{
    std::vector<std::uint8_t> expected = compute_mac(dek);
    if (!equal_constant_time(expected, mac))
        throw InvalidInput(where + ": the encryption record (ddb.vmcrypt.*) fails its MAC check: it was changed "
                           "after vmcrypt wrote it; restore the original descriptor");
}

std::string fields_to_text(const RecordFields& fields)
{
    std::string text;
    for (const auto& [name, value] : fields)
        text += name + "=" + value + "\n";
    return text;
}

RecordFields fields_from_text(const std::string& text)
{
    RecordFields fields;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos)
            end = text.size();
        std::string line = text.substr(start, end - start);
        std::size_t eq = line.find('=');
        if (eq == std::string::npos)
            throw InvalidInput("journal: record line \"" + line.substr(0, 40) + "\" has no '='");
        fields.emplace_back(line.substr(0, eq), line.substr(eq + 1));
        start = end + 1;
    }
    return fields;
}

}  // namespace vmcrypt
