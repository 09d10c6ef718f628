// LUKS1 header: build, parse and unlock round trips, and one malformed phdr per validation rule, each
// of which must be rejected with an error that names the field.

#include "core/crypto/random.hpp"
#include "core/error.hpp"
#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/luks1_report.hpp"
#include "formats/qcow2/qemu_secret.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {
namespace {

std::vector<std::uint8_t> bytes_of(const std::string& text)
{
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

void put_be32(std::vector<std::uint8_t>& area, std::size_t offset, std::uint32_t value)
{
    for (std::size_t i = 0; i < 4; ++i)
        area[offset + i] = static_cast<std::uint8_t>(value >> (24 - 8 * i));
}

void put_string(std::vector<std::uint8_t>& area, std::size_t offset, std::size_t size, const std::string& text)
{
    std::memset(area.data() + offset, 0, size);
    std::memcpy(area.data() + offset, text.data(), std::min(size, text.size()));
}

// Offsets from the LUKS1 specification, written out here so the test does not reuse the parser's table.
constexpr std::size_t slot_base(std::size_t slot)
{
    return 208 + 48 * slot;
}

class LuksHeaderTest : public ::testing::Test {
protected:
    static void SetUpTestSuite()
    {
        master_key_ = new SecureBytes(random_bytes(luks_master_key_size));
        area_ = new std::vector<std::uint8_t>(build_luks_area(*master_key_, bytes_of("secret text")));
    }
    static void TearDownTestSuite()
    {
        delete master_key_;
        delete area_;
    }

    static SecureBytes* master_key_;
    static std::vector<std::uint8_t>* area_;
};

SecureBytes* LuksHeaderTest::master_key_ = nullptr;
std::vector<std::uint8_t>* LuksHeaderTest::area_ = nullptr;

TEST_F(LuksHeaderTest, BuiltAreaHasQemuLayout)
{
    ASSERT_EQ(area_->size(), 4040u * 512);
    EXPECT_EQ(luks_area_length(), 2068480u);

    const LuksHeader header = parse_luks_header(*area_, "test.qcow2");
    EXPECT_EQ(header.version, 1);
    EXPECT_EQ(header.cipher_name, "aes");
    EXPECT_EQ(header.cipher_mode, "xts-plain64");
    EXPECT_EQ(header.hash_spec, "sha256");
    EXPECT_EQ(header.payload_offset, 4040u);
    EXPECT_EQ(header.key_bytes, 64u);
    EXPECT_EQ(header.mk_digest_iterations, luks_min_iterations);
    EXPECT_EQ(header.uuid.size(), 36u);
    EXPECT_EQ(header.uuid[14], '4') << "a version 4 UUID";
    EXPECT_EQ(header.active_slot_count(), 1u);
    for (std::size_t i = 0; i < luks_key_slot_count; ++i) {
        SCOPED_TRACE("key slot " + std::to_string(i));
        EXPECT_EQ(header.slots[i].active, i == 0);
        EXPECT_EQ(header.slots[i].key_material_offset, 8 + 504 * i);
        EXPECT_EQ(header.slots[i].stripes, 4000u);
    }
    EXPECT_EQ(header.slots[0].iterations, luks_min_iterations);
}

TEST_F(LuksHeaderTest, UnlockReturnsMasterKey)
{
    const LuksHeader header = parse_luks_header(*area_, "test.qcow2");
    const SecureBytes master_key = unlock_luks(header, *area_, bytes_of("secret text"), "test.qcow2");
    EXPECT_EQ(master_key, *master_key_);
}

TEST_F(LuksHeaderTest, UnlockRejectsWrongSecret)
{
    const LuksHeader header = parse_luks_header(*area_, "test.qcow2");
    try {
        unlock_luks(header, *area_, bytes_of("secret texT"), "test.qcow2");
        FAIL() << "a wrong secret unlocked the header";
    } catch (const WrongKey& error) {
        EXPECT_NE(std::string(error.what()).find("test.qcow2"), std::string::npos) << error.what();
        EXPECT_NE(std::string(error.what()).find("none of the 1 enabled"), std::string::npos) << error.what();
    }
}

TEST_F(LuksHeaderTest, UnlockRejectsDamagedKeyMaterial)
{
    auto area = *area_;
    area[8 * 512 + 100000] ^= 0x01;
    const LuksHeader header = parse_luks_header(area, "test.qcow2");
    EXPECT_THROW(unlock_luks(header, area, bytes_of("secret text"), "test.qcow2"), WrongKey);
}

TEST_F(LuksHeaderTest, UnlockWithoutEnabledSlotSaysSo)
{
    auto area = *area_;
    put_be32(area, slot_base(0), luks_key_disabled);
    const LuksHeader header = parse_luks_header(area, "test.qcow2");
    try {
        unlock_luks(header, area, bytes_of("secret text"), "test.qcow2");
        FAIL() << "a header without enabled key slots unlocked";
    } catch (const WrongKey& error) {
        EXPECT_NE(std::string(error.what()).find("no enabled key slot"), std::string::npos) << error.what();
    }
}

TEST_F(LuksHeaderTest, UnlockTriesEverySlot)
{
    // Slot 0 copied into slot 5 and slot 0 damaged: the key must come from slot 5.
    auto area = *area_;
    std::memcpy(area.data() + slot_base(5), area.data() + slot_base(0), 40);  // state, iterations, salt
    std::memcpy(area.data() + 512 * (8 + 504 * 5), area.data() + 512 * 8, 64 * 4000);
    area[slot_base(0) + 8] ^= 0xff;  // slot 0's salt
    const LuksHeader header = parse_luks_header(area, "test.qcow2");
    EXPECT_EQ(header.active_slot_count(), 2u);
    EXPECT_EQ(unlock_luks(header, area, bytes_of("secret text"), "test.qcow2"), *master_key_);
}

TEST_F(LuksHeaderTest, UnlockChecksAreaLength)
{
    const LuksHeader header = parse_luks_header(*area_, "test.qcow2");
    const std::span<const std::uint8_t> short_area(area_->data(), 100000);
    EXPECT_THROW(unlock_luks(header, short_area, bytes_of("secret text"), "test.qcow2"), InvalidInput);
}

TEST_F(LuksHeaderTest, BuildRejectsBadArguments)
{
    EXPECT_THROW(build_luks_area(SecureBytes(32, 1), bytes_of("s")), std::invalid_argument);
    EXPECT_THROW(build_luks_area(*master_key_, {}), std::invalid_argument);
    EXPECT_THROW(build_luks_area(*master_key_, bytes_of("s"), LuksBuildParams{999, 1000}), std::invalid_argument);
    EXPECT_THROW(build_luks_area(*master_key_, bytes_of("s"), LuksBuildParams{1000, 999}), std::invalid_argument);
}

TEST_F(LuksHeaderTest, BuildUsesFreshSalts)
{
    const auto again = build_luks_area(*master_key_, bytes_of("secret text"));
    const LuksHeader first = parse_luks_header(*area_, "a");
    const LuksHeader second = parse_luks_header(again, "b");
    EXPECT_NE(first.mk_digest_salt, second.mk_digest_salt);
    EXPECT_NE(first.slots[0].salt, second.slots[0].salt);
    EXPECT_NE(first.uuid, second.uuid);
}

TEST_F(LuksHeaderTest, AddKeySlotKeepsOldSlot)
{
    auto area = *area_;
    const LuksHeader before = parse_luks_header(area, "test.qcow2");
    const std::size_t index = add_luks_key_slot(area, before, *master_key_, bytes_of("second"), 1000, "test.qcow2");
    EXPECT_EQ(index, 1u);

    const LuksHeader after = parse_luks_header(area, "test.qcow2");
    EXPECT_EQ(after.active_slot_count(), 2u);
    EXPECT_TRUE(after.slots[1].active);
    EXPECT_EQ(after.slots[1].iterations, 1000u);
    EXPECT_EQ(after.slots[1].key_material_offset, 8u + 504u);
    EXPECT_EQ(unlock_luks(after, area, bytes_of("second"), "test.qcow2"), *master_key_);
    EXPECT_EQ(unlock_luks(after, area, bytes_of("secret text"), "test.qcow2"), *master_key_);
    // Only slot 1's phdr bytes and key material changed.
    EXPECT_TRUE(std::equal(area.begin(), area.begin() + slot_base(1), area_->begin()));
    EXPECT_TRUE(std::equal(area.begin() + slot_base(2), area.begin() + 512 * (8 + 504), area_->begin() + slot_base(2)));
    EXPECT_TRUE(std::equal(area.begin() + 512 * (8 + 2 * 504), area.end(), area_->begin() + 512 * (8 + 2 * 504)));
}

TEST_F(LuksHeaderTest, ActiveFieldOffsetMarksEnabledSlot)
{
    auto area = *area_;
    const LuksHeader before = parse_luks_header(area, "test.qcow2");
    const std::size_t index = add_luks_key_slot(area, before, *master_key_, bytes_of("second"), 1000, "test.qcow2");
    const std::size_t active = luks_key_slot_active_offset(index);
    EXPECT_EQ(active, slot_base(index));

    // Only the active field turned on: with the old four bytes put back the slot parses as disabled.
    std::copy(area_->begin() + active, area_->begin() + active + 4, area.begin() + active);
    EXPECT_FALSE(parse_luks_header(area, "test.qcow2").slots[index].active);
    // Slot 6's entry straddles the first two sectors; its active field is in the first.
    EXPECT_EQ(luks_key_slot_active_offset(6) / 512, 0u);
    EXPECT_EQ((luks_key_slot_active_offset(6) + 47) / 512, 1u);
    EXPECT_THROW(luks_key_slot_active_offset(luks_key_slot_count), std::invalid_argument);
}

TEST_F(LuksHeaderTest, AddKeySlotChecksMasterKey)
{
    auto area = *area_;
    const LuksHeader header = parse_luks_header(area, "test.qcow2");
    SecureBytes wrong = *master_key_;
    wrong[0] ^= 1;
    EXPECT_THROW(add_luks_key_slot(area, header, wrong, bytes_of("second"), 1000, "test.qcow2"), WrongKey);
    EXPECT_EQ(area, *area_) << "a rejected add changed the area";
    EXPECT_THROW(add_luks_key_slot(area, header, *master_key_, {}, 1000, "test.qcow2"), std::invalid_argument);
    EXPECT_THROW(add_luks_key_slot(area, header, *master_key_, bytes_of("s"), 10, "test.qcow2"), std::invalid_argument);
}

TEST_F(LuksHeaderTest, AddKeySlotFailsWhenFull)
{
    auto area = *area_;
    for (std::size_t expected = 1; expected < luks_key_slot_count; ++expected) {
        const LuksHeader header = parse_luks_header(area, "test.qcow2");
        EXPECT_EQ(add_luks_key_slot(area, header, *master_key_, bytes_of("s" + std::to_string(expected)), 1000,
                                    "test.qcow2"),
                  expected);
    }
    const LuksHeader full = parse_luks_header(area, "test.qcow2");
    EXPECT_EQ(full.active_slot_count(), 8u);
    EXPECT_EQ(unlock_luks(full, area, bytes_of("s7"), "test.qcow2"), *master_key_);
    EXPECT_THROW(add_luks_key_slot(area, full, *master_key_, bytes_of("s8"), 1000, "test.qcow2"), WrongDiskState);
}

struct MalformedCase {
    const char* name;
    std::function<void(std::vector<std::uint8_t>&)> damage;
    const char* field;  // must appear in the message
    bool unsupported;   // UnsupportedInput, not InvalidInput
};

TEST_F(LuksHeaderTest, MalformedHeadersNameTheField)
{
    const std::vector<MalformedCase> cases = {
        {"bad magic", [](auto& a) { a[4] = 0xbb; }, "magic", false},
        {"zeroed area", [](auto& a) { std::fill(a.begin(), a.begin() + 592, 0); }, "magic", false},
        {"version 2", [](auto& a) { a[7] = 2; }, "version is 2", true},
        {"version 0", [](auto& a) { a[7] = 0; }, "version is 0", true},
        {"unknown cipher", [](auto& a) { put_string(a, 8, 32, "twofish"); }, "cipher-name is \"twofish\"", true},
        {"empty cipher", [](auto& a) { put_string(a, 8, 32, ""); }, "cipher-name is empty", false},
        {"cipher without NUL", [](auto& a) { std::memset(a.data() + 8, 'a', 32); }, "cipher-name is not NUL-terminated", false},
        {"mode without IV", [](auto& a) { put_string(a, 40, 32, "xts"); }, "cipher-mode is \"xts\"", true},
        {"mode plain65", [](auto& a) { put_string(a, 40, 32, "xts-plain65"); }, "cipher-mode is \"xts-plain65\"", true},
        {"mode cbc-essiv", [](auto& a) { put_string(a, 40, 32, "cbc-essiv:sha256"); }, "cipher-mode", true},
        {"mode without NUL", [](auto& a) { std::memset(a.data() + 40, 'x', 32); }, "cipher-mode is not NUL-terminated", false},
        {"unknown hash", [](auto& a) { put_string(a, 72, 32, "sha2566"); }, "hash-spec is \"sha2566\"", true},
        {"ripemd160", [](auto& a) { put_string(a, 72, 32, "ripemd160"); }, "hash-spec", true},
        {"hash without NUL", [](auto& a) { std::memset(a.data() + 72, 's', 32); }, "hash-spec is not NUL-terminated", false},
        {"uuid without NUL", [](auto& a) { std::memset(a.data() + 168, '1', 40); }, "uuid is not NUL-terminated", false},
        {"key_bytes 0", [](auto& a) { put_be32(a, 108, 0); }, "key-bytes is 0", false},
        {"key_bytes 1000", [](auto& a) { put_be32(a, 108, 1000); }, "key-bytes is 1000", false},
        {"key_bytes 32", [](auto& a) { put_be32(a, 108, 32); }, "key-bytes is 32", true},
        {"mk iterations 0", [](auto& a) { put_be32(a, 164, 0); }, "mk-digest-iter is 0", false},
        {"slot iterations 0", [](auto& a) { put_be32(a, slot_base(0) + 4, 0); }, "key slot 0 iterations is 0", false},
        {"mk iterations above the limit", [](auto& a) { put_be32(a, 164, 0xffffffff); },
         "mk-digest-iter is 4294967295, expected 1 to 100000000", false},
        {"slot iterations above the limit", [](auto& a) { put_be32(a, slot_base(0) + 4, 100'000'001); },
         "key slot 0 iterations is 100000001", false},
        {"slot state 1", [](auto& a) { put_be32(a, slot_base(3), 1); }, "key slot 3 active is 0x00000001", false},
        {"active slot state damaged", [](auto& a) { a[slot_base(0) + 1] ^= 0x01; }, "key slot 0 active", false},
        {"stripes 0", [](auto& a) { put_be32(a, slot_base(0) + 44, 0); }, "key slot 0 stripes is 0", false},
        {"stripes 3999 in a disabled slot", [](auto& a) { put_be32(a, slot_base(6) + 44, 3999); }, "key slot 6 stripes is 3999", false},
        {"key material in the phdr", [](auto& a) { put_be32(a, slot_base(0) + 40, 1); }, "key slot 0 key-material-offset is 1", false},
        {"key material offset 0", [](auto& a) { put_be32(a, slot_base(2) + 40, 0); }, "key slot 2 key-material-offset is 0", false},
        {"overlapping slots", [](auto& a) { put_be32(a, slot_base(1) + 40, 400); }, "key slot 1 key-material-offset is 400", false},
        {"key material past the payload", [](auto& a) { put_be32(a, slot_base(7) + 40, 3600); }, "key slot 7 key-material-offset is 3600", false},
        {"key material offset huge", [](auto& a) { put_be32(a, slot_base(7) + 40, 0xffffffff); }, "key slot 7 key-material-offset is 4294967295", false},
        {"payload offset 1000", [](auto& a) { put_be32(a, 104, 1000); }, "key-material-offset", false},
        {"payload offset 2", [](auto& a) { put_be32(a, 104, 2); }, "key slot 0 key-material-offset", false},
    };

    for (const auto& test_case : cases) {
        SCOPED_TRACE(test_case.name);
        auto area = *area_;
        test_case.damage(area);
        try {
            parse_luks_header(area, "bad.qcow2");
            ADD_FAILURE() << "the damaged header parsed";
        } catch (const Error& error) {
            const std::string message = error.what();
            EXPECT_EQ(message.rfind("bad.qcow2: ", 0), 0u) << message;
            EXPECT_NE(message.find(test_case.field), std::string::npos) << message;
            EXPECT_EQ(message.find('\n'), std::string::npos) << message;
            EXPECT_EQ(error.code(), ExitCode::invalid_input) << message;
            EXPECT_EQ(dynamic_cast<const UnsupportedInput*>(&error) != nullptr, test_case.unsupported) << message;
        }
    }
}

TEST_F(LuksHeaderTest, ShortAreasAreRejected)
{
    for (const std::size_t size : {std::size_t{0}, std::size_t{100}, std::size_t{591}}) {
        SCOPED_TRACE(size);
        const std::span<const std::uint8_t> area(area_->data(), size);
        EXPECT_THROW(parse_luks_header(area, "short.qcow2"), InvalidInput);
    }
    // The phdr fits, but slot 7's key material ends past the area.
    const std::span<const std::uint8_t> truncated(area_->data(), 512 * 4000);
    try {
        parse_luks_header(truncated, "short.qcow2");
        FAIL() << "a truncated area parsed";
    } catch (const InvalidInput& error) {
        EXPECT_NE(std::string(error.what()).find("key slot 7 key-material-offset"), std::string::npos) << error.what();
    }
}

TEST_F(LuksHeaderTest, AcceptsOtherSupportedHashes)
{
    // A sha1 or sha512 header with this key material does not unlock (the material was made with
    // sha256), but it parses.
    for (const char* hash : {"sha1", "sha512"}) {
        auto area = *area_;
        put_string(area, 72, 32, hash);
        EXPECT_EQ(parse_luks_header(area, "x").hash_spec, hash);
    }
}

TEST_F(LuksHeaderTest, ReportListsEverySlot)
{
    const LuksHeader header = parse_luks_header(*area_, "test.qcow2");
    const auto report = luks_header_json(header);
    EXPECT_EQ(report.at("cipher"), "aes-xts-plain64");
    EXPECT_EQ(report.at("hash"), "sha256");
    EXPECT_EQ(report.at("keyBytes"), 64);
    EXPECT_EQ(report.at("payloadOffset"), 4040);
    EXPECT_EQ(report.at("uuid"), header.uuid);
    EXPECT_EQ(report.at("masterKeyDigestIterations"), 1000);
    ASSERT_EQ(report.at("keySlots").size(), 8u);
    EXPECT_EQ(report.at("keySlots")[0].at("enabled"), true);
    EXPECT_EQ(report.at("keySlots")[0].at("iterations"), 1000);
    EXPECT_EQ(report.at("keySlots")[7].at("enabled"), false);
    EXPECT_EQ(report.at("keySlots")[7].at("keyMaterialOffset"), 8 + 504 * 7);
    EXPECT_EQ(report.dump().find("salt"), std::string::npos);
}

TEST(QemuSecret, MatchesHkdfVector)
{
    // Computed with Python `cryptography`: HKDF(SHA256, length=32, salt=None,
    // info=b"vmcrypt qemu luks secret v1").derive(bytes(range(64))).hex()
    SecureBytes dek(64);
    for (std::size_t i = 0; i < dek.size(); ++i)
        dek[i] = static_cast<std::uint8_t>(i);
    const SecureBytes secret = derive_qemu_secret(dek);
    EXPECT_EQ(std::string(secret.begin(), secret.end()),
              "dfb960be0c96862ace891876c340ed6ba96ec68ed70c52350a07d121edf58935");

    const SecureBytes value = libvirt_secret_value(secret);
    EXPECT_EQ(std::string(value.begin(), value.end()),
              "ZGZiOTYwYmUwYzk2ODYyYWNlODkxODc2YzM0MGVkNmJhOTZlYzY4ZWQ3MGM1MjM1MGEwN2QxMjFlZGY1ODkzNQ==");
    const SecureBytes object = qemu_secret_object(secret, "sec0");
    EXPECT_EQ(std::string(object.begin(), object.end()),
              "secret,id=sec0,data=dfb960be0c96862ace891876c340ed6ba96ec68ed70c52350a07d121edf58935");
}

TEST(QemuSecret, DependsOnDek)
{
    const SecureBytes a = derive_qemu_secret(SecureBytes(64, 1));
    const SecureBytes b = derive_qemu_secret(SecureBytes(64, 2));
    EXPECT_NE(a, b);
    EXPECT_EQ(a.size(), 64u);
    EXPECT_THROW(derive_qemu_secret(SecureBytes{}), std::invalid_argument);
}

TEST(QemuSecret, RejectsBadObjectId)
{
    const SecureBytes secret = derive_qemu_secret(SecureBytes(64, 1));
    EXPECT_THROW(qemu_secret_object(secret, ""), std::invalid_argument);
    EXPECT_THROW(qemu_secret_object(secret, "sec0,data=x"), std::invalid_argument);
    EXPECT_THROW(qemu_secret_object(secret, "0sec"), std::invalid_argument);
    EXPECT_TRUE(is_qemu_object_id("sec0"));
    EXPECT_TRUE(is_qemu_object_id("disk-1.key_a"));
    EXPECT_FALSE(is_qemu_object_id("sec 0"));
    EXPECT_FALSE(is_qemu_object_id("_sec"));
}

}  // namespace
}  // namespace vmcrypt::qcow2
