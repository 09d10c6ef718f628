#include "core/record/encryption_record.hpp"

#include "core/crypto/kdf.hpp"
#include "core/crypto/mac.hpp"
#include "core/error.hpp"

#include <botan/base64.h>
#include <botan/exceptn.h>

#include <map>

namespace vmcrypt {

namespace {

constexpr std::string_view mac_label = "vmcrypt record mac v1";
constexpr std::string_view mac_prefix = "hmac-sha256:";

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
    for (std::size_t i = 0; i < record.key_slots.size(); ++i)
        fields.emplace_back("keySlot." + std::to_string(i), record.key_slots[i].to_text());
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
    else
        throw InvalidInput(where + ": encryption record state \"" + state + "\" is not one of encrypting, encrypted, decrypting");

    record.cipher = take("cipher");
    if (record.cipher != record_cipher)
        throw UnsupportedInput(where + ": cipher \"" + record.cipher + "\" is not supported (expected aes-xts-plain64)");
    if (take("dekBits") != "512")
        throw UnsupportedInput(where + ": dekBits must be 512 (AES-256-XTS)");
    if (take("unitSize") != "512")
        throw UnsupportedInput(where + ": unitSize must be 512");
    record.unit_size = 512;
    record.tweak = take("tweak");
    if (record.tweak != "guest-sector" && record.tweak != "host-sector")
        throw UnsupportedInput(where + ": tweak rule \"" + record.tweak + "\" is not supported");
    record.zero_units = take("zeroUnits");
    if (record.zero_units != "plain" && record.zero_units != "encrypted")
        throw UnsupportedInput(where + ": zeroUnits \"" + record.zero_units + "\" is not supported");

    for (std::size_t i = 0;; ++i) {
        std::string name = "keySlot." + std::to_string(i);
        if (!by_name.count(name))
            break;
        record.key_slots.push_back(KeySlot::parse(take(name), where + ": ddb.vmcrypt." + name));
    }
    if (record.key_slots.empty())
        throw InvalidInput(where + ": encryption record has no key slot (ddb.vmcrypt.keySlot.0)");

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
