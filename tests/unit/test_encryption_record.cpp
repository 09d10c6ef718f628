// Encryption record and key slot tests: round trip, MAC coverage of every field, and rejection of
// malformed values with messages that name the field.

#include "core/crypto/random.hpp"
#include "core/error.hpp"
#include "core/keys/key_slot.hpp"
#include "core/record/encryption_record.hpp"

#include <gtest/gtest.h>

namespace vmcrypt {
namespace {

KeySlot sample_slot()
{
    KeySlot slot;
    slot.type = "keystore";
    slot.params["kek"] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    slot.wrapped_dek.assign(72, 0xab);
    return slot;
}

EncryptionRecord sample_record(const SecureBytes& dek)
{
    EncryptionRecord record;
    record.state = RecordState::encrypted;
    record.tweak = "guest-sector";
    record.key_slots = {sample_slot()};
    record.seal(dek);
    return record;
}

TEST(EncryptionRecord, RoundTripThroughFields)
{
    SecureBytes dek = random_bytes(64);
    EncryptionRecord record = sample_record(dek);
    EncryptionRecord parsed = EncryptionRecord::from_fields(record.to_fields(), "disk.vmdk");
    EXPECT_EQ(parsed.state, RecordState::encrypted);
    EXPECT_EQ(parsed.tweak, "guest-sector");
    ASSERT_EQ(parsed.key_slots.size(), 1u);
    EXPECT_EQ(parsed.key_slots[0].to_text(), record.key_slots[0].to_text());
    EXPECT_NO_THROW(parsed.verify_mac(dek, "disk.vmdk"));
}

TEST(EncryptionRecord, LegacyCipherOnlyWhileDecrypting)
{
    // The record of a legacy qcow AES decrypt: a 16-byte key wrapped to 24 bytes, 128 DEK bits.
    SecureBytes key = random_bytes(16);
    EncryptionRecord record;
    record.state = RecordState::decrypting;
    record.cipher = legacy_record_cipher;
    record.dek_bits = 128;
    record.tweak = "guest-sector";
    record.zero_units = "encrypted";
    record.key_slots = {sample_slot()};
    record.key_slots[0].wrapped_dek.assign(24, 0xcd);
    record.seal(key);
    EncryptionRecord parsed = EncryptionRecord::from_fields(record.to_fields(), "disk.qcow2");
    EXPECT_EQ(parsed.cipher, "aes-cbc-plain64");
    EXPECT_EQ(parsed.dek_bits, 128u);
    EXPECT_NO_THROW(parsed.verify_mac(key, "disk.qcow2"));

    record.state = RecordState::encrypted;
    record.seal(key);
    EXPECT_THROW(EncryptionRecord::from_fields(record.to_fields(), "disk.qcow2"), InvalidInput);

    record.state = RecordState::decrypting;
    record.dek_bits = 512;
    record.seal(key);
    EXPECT_THROW(EncryptionRecord::from_fields(record.to_fields(), "disk.qcow2"), UnsupportedInput);
}

TEST(EncryptionRecord, MacCoversEveryField)
{
    SecureBytes dek = random_bytes(64);
    RecordFields fields = sample_record(dek).to_fields();
    // Changing any field but the MAC itself to another valid value must fail the MAC check.
    std::map<std::string, std::string> replacements = {{"state", "decrypting"}, {"tweak", "host-sector"}};
    for (const auto& [name, value] : replacements) {
        RecordFields changed = fields;
        for (auto& field : changed)
            if (field.first == name)
                field.second = value;
        EncryptionRecord parsed = EncryptionRecord::from_fields(changed, "disk.vmdk");
        EXPECT_THROW(parsed.verify_mac(dek, "disk.vmdk"), InvalidInput) << "field " << name;
    }

    RecordFields other_slot = fields;
    for (auto& field : other_slot)
        if (field.first == "keySlot.0")
            field.second[field.second.size() - 5] = field.second[field.second.size() - 5] == 'A' ? 'B' : 'A';
    EXPECT_THROW(EncryptionRecord::from_fields(other_slot, "disk.vmdk").verify_mac(dek, "disk.vmdk"), InvalidInput);

    SecureBytes other_dek = random_bytes(64);
    EXPECT_THROW(EncryptionRecord::from_fields(fields, "disk.vmdk").verify_mac(other_dek, "disk.vmdk"), InvalidInput);
}

TEST(EncryptionRecord, RejectsMalformedFields)
{
    SecureBytes dek = random_bytes(64);
    const RecordFields good = sample_record(dek).to_fields();
    struct Case {
        std::string field;
        std::string value;  // empty: remove the field
        std::string expected_in_message;
    };
    std::vector<Case> cases = {
        {"version", "2", "version 2"},
        {"state", "sleeping", "sleeping"},
        {"cipher", "aes-cbc-essiv", "aes-cbc-essiv"},
        {"unitSize", "4096", "unitSize"},
        {"dekBits", "256", "dekBits"},
        {"tweak", "random", "random"},
        {"keySlot.0", "type=keystore;dek=AAAA", "72"},
        {"keySlot.0", "kek=x;dek=AAAA", "no type"},
        {"mac", "sha1:xyz", "mac"},
        {"cipher", "", "cipher is missing"},
        {"keySlot.0", "", "no key slot"},
    };
    for (const Case& c : cases) {
        RecordFields fields;
        for (const auto& field : good) {
            if (field.first != c.field)
                fields.push_back(field);
            else if (!c.value.empty())
                fields.emplace_back(field.first, c.value);
        }
        try {
            EncryptionRecord::from_fields(fields, "disk.vmdk");
            ADD_FAILURE() << c.field << "=" << c.value << " was accepted";
        } catch (const Error& e) {
            std::string message = e.what();
            EXPECT_NE(message.find("disk.vmdk"), std::string::npos) << message;
            EXPECT_NE(message.find(c.expected_in_message), std::string::npos) << message;
            EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        }
    }

    RecordFields unknown = good;
    unknown.emplace_back("surprise", "1");
    EXPECT_THROW(EncryptionRecord::from_fields(unknown, "disk.vmdk"), InvalidInput);
}

TEST(KeySlot, ParsesAndRejects)
{
    KeySlot slot = sample_slot();
    KeySlot parsed = KeySlot::parse(slot.to_text(), "slot");
    EXPECT_EQ(parsed.type, "keystore");
    EXPECT_EQ(parsed.params.at("kek"), slot.params.at("kek"));
    EXPECT_EQ(parsed.wrapped_dek, slot.wrapped_dek);

    EXPECT_THROW(KeySlot::parse("type=keystore;wrap=aes-gcm;dek=AAAA", "slot"), UnsupportedInput);
    EXPECT_THROW(KeySlot::parse("type=keystore;kek=a\"b;dek=AAAA", "slot"), InvalidInput);
    EXPECT_THROW(KeySlot::parse("type=keystore;kek=a;kek=b;dek=AAAA", "slot"), InvalidInput);
    EXPECT_THROW(KeySlot::parse("type=keystore;dek=!!!", "slot"), InvalidInput);
    EXPECT_THROW(KeySlot::parse("", "slot"), InvalidInput);
}

}  // namespace
}  // namespace vmcrypt
