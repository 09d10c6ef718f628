// Rekey building blocks: stable key slot ids and their MAC coverage, and the previous-DEK field of a
// deep rekey. The reencrypt direction of the engine must give the same result as encrypting under the
// new DEK and keep zero units. Key-slot changes run on a file-backed disk.

#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/engine/rekey.hpp"
#include "core/engine/rewrite_engine.hpp"
#include "core/error.hpp"
#include "core/keys/key_file_source.hpp"
#include "core/keys/key_text.hpp"
#include "core/record/encryption_record.hpp"
#include "file_backed_disk.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

namespace vmcrypt {
namespace {

using test_support::FileBackedDisk;
namespace fs = std::filesystem;

KeySlot slot_with_kek(const std::string& kek)
{
    KeySlot slot;
    slot.type = "keystore";
    slot.params["kek"] = kek;
    slot.wrapped_dek.assign(72, 0x5c);
    return slot;
}

EncryptionRecord three_slot_record()
{
    EncryptionRecord record;
    record.state = RecordState::encrypted;
    record.tweak = "guest-sector";
    for (const char* kek : {"00000000-0000-0000-0000-000000000000", "11111111-1111-1111-1111-111111111111",
                            "22222222-2222-2222-2222-222222222222"})
        record.add_key_slot(slot_with_kek(kek));
    return record;
}

// The exit code of the vmcrypt::Error that `action` throws, or ok when it throws none.
template <typename Action>
ExitCode exit_code_of(const Action& action)
{
    try {
        action();
    } catch (const Error& e) {
        return e.code();
    }
    return ExitCode::ok;
}

std::string field(const RecordFields& fields, const std::string& name)
{
    for (const auto& [key, value] : fields)
        if (key == name)
            return value;
    return "";
}

TEST(KeySlotIds, RemovalKeepsOtherIds)
{
    EncryptionRecord record = three_slot_record();
    ASSERT_TRUE(record.remove_key_slot(1));
    EXPECT_FALSE(record.remove_key_slot(1));
    EXPECT_EQ(record.slot_ids(), (std::vector<std::uint32_t>{0, 2}));

    SecureBytes dek = random_bytes(64);
    record.seal(dek);
    RecordFields fields = record.to_fields();
    EXPECT_EQ(field(fields, "keySlot.1"), "");
    EXPECT_NE(field(fields, "keySlot.2"), "");

    EncryptionRecord parsed = EncryptionRecord::from_fields(fields, "disk.vmdk");
    EXPECT_EQ(parsed.slot_ids(), (std::vector<std::uint32_t>{0, 2}));
    EXPECT_NO_THROW(parsed.verify_mac(dek, "disk.vmdk"));
}

TEST(KeySlotIds, AddTakesLowestFreeId)
{
    EncryptionRecord record = three_slot_record();
    record.remove_key_slot(0);
    EXPECT_EQ(record.add_key_slot(slot_with_kek("33333333-3333-3333-3333-333333333333")), 0u);
    EXPECT_EQ(record.add_key_slot(slot_with_kek("44444444-4444-4444-4444-444444444444")), 3u);
}

TEST(KeySlotIds, AppendedSlotsGetNextIds)
{
    EncryptionRecord record;
    record.key_slots = {slot_with_kek("a"), slot_with_kek("b")};
    EXPECT_EQ(record.slot_ids(), (std::vector<std::uint32_t>{0, 1}));
}

TEST(KeySlotIds, LimitIsEnforced)
{
    EncryptionRecord record;
    for (std::uint32_t i = 0; i < max_key_slots; ++i)
        record.add_key_slot(slot_with_kek("k" + std::to_string(i)));
    EXPECT_THROW(record.add_key_slot(slot_with_kek("extra")), InvalidInput);
}

TEST(KeySlotIds, MacCoversSlotIdsAndAddedSlots)
{
    SecureBytes dek = random_bytes(64);
    EncryptionRecord record = three_slot_record();
    record.seal(dek);
    const RecordFields fields = record.to_fields();

    // The same slot under another id.
    RecordFields moved = fields;
    for (auto& [key, value] : moved)
        if (key == "keySlot.2")
            key = "keySlot.5";
    EXPECT_THROW(EncryptionRecord::from_fields(moved, "d").verify_mac(dek, "d"), InvalidInput);

    // A slot inserted by hand (a copy of a valid one under a free id).
    RecordFields inserted = fields;
    inserted.insert(inserted.begin() + 10, {"keySlot.7", field(fields, "keySlot.0")});
    EXPECT_THROW(EncryptionRecord::from_fields(inserted, "d").verify_mac(dek, "d"), InvalidInput);

    // A slot removed by hand.
    RecordFields removed;
    for (const auto& entry : fields)
        if (entry.first != "keySlot.1")
            removed.push_back(entry);
    EXPECT_THROW(EncryptionRecord::from_fields(removed, "d").verify_mac(dek, "d"), InvalidInput);
}

TEST(KeySlotIds, NonCanonicalIdIsRejected)
{
    SecureBytes dek = random_bytes(64);
    EncryptionRecord record = three_slot_record();
    record.seal(dek);
    for (const char* name : {"keySlot.01", "keySlot.32", "keySlot.x"}) {
        RecordFields fields = record.to_fields();
        fields.insert(fields.begin() + 7, {name, field(fields, "keySlot.0")});
        EXPECT_THROW(EncryptionRecord::from_fields(fields, "d"), InvalidInput) << name;
    }
}

TEST(PreviousDek, WrapsUnderCurrentDek)
{
    SecureBytes previous = random_bytes(64);
    SecureBytes dek = random_bytes(64);
    EncryptionRecord record = three_slot_record();
    record.state = RecordState::rekeying;
    record.wrap_previous_dek(previous, dek);
    record.seal(dek);

    EncryptionRecord parsed = EncryptionRecord::from_fields(record.to_fields(), "d");
    EXPECT_EQ(parsed.unwrap_previous_dek(dek, "d"), previous);
    EXPECT_THROW(parsed.unwrap_previous_dek(random_bytes(64), "d"), InvalidInput);
}

TEST(PreviousDek, BelongsOnlyToRekeyingState)
{
    SecureBytes dek = random_bytes(64);
    EncryptionRecord record = three_slot_record();
    record.state = RecordState::rekeying;
    record.wrap_previous_dek(random_bytes(64), dek);
    record.seal(dek);
    RecordFields fields = record.to_fields();

    RecordFields encrypted = fields;
    for (auto& [key, value] : encrypted)
        if (key == "state")
            value = "encrypted";
    EXPECT_THROW(EncryptionRecord::from_fields(encrypted, "d"), InvalidInput);

    RecordFields without;
    for (const auto& entry : fields)
        if (entry.first != "previousDek")
            without.push_back(entry);
    EXPECT_THROW(EncryptionRecord::from_fields(without, "d"), InvalidInput);
}

// The reencrypt direction on a file-backed disk: encrypt under DEK A, reencrypt to DEK B, and compare
// with encrypting the plaintext under B directly.
class ReencryptTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        dir_ = fs::temp_directory_path() / ("vmcrypt-rekey-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        plaintext_.resize(512 * 1024);
        std::mt19937_64 rng(7);
        for (auto& byte : plaintext_)
            byte = static_cast<std::uint8_t>(rng());
        std::fill(plaintext_.begin() + 40 * 512, plaintext_.begin() + 60 * 512, 0);
        runs_ = {{1, 0, 256 * 1024, 100}, {1, 256 * 1024, 256 * 1024, 9000}};
    }

    void TearDown() override { fs::remove_all(dir_); }

    FileBackedDisk make_disk(const std::string& name)
    {
        std::ofstream(dir_ / (name + ".meta"), std::ios::binary | std::ios::trunc);
        std::ofstream data(dir_ / (name + ".data"), std::ios::binary | std::ios::trunc);
        data.write(reinterpret_cast<const char*>(plaintext_.data()), static_cast<std::streamsize>(plaintext_.size()));
        data.close();
        return FileBackedDisk(dir_ / (name + ".meta"), dir_ / (name + ".data"), runs_);
    }

    std::vector<std::uint8_t> data_of(const std::string& name)
    {
        std::ifstream in(dir_ / (name + ".data"), std::ios::binary);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }

    static RewritePlan plan(FileBackedDisk& disk, Operation operation)
    {
        RewritePlan result;
        result.operation = operation;
        result.start_metadata = disk.record_update(RecordFields{{"state", "working"}});
        result.final_metadata = disk.record_update(RecordFields{{"state", "done"}});
        result.journal_record = {{"state", "done"}};
        return result;
    }

    static RewriteOptions options()
    {
        RewriteOptions result;
        result.window_size = 64 * 1024;
        result.resume_command = "test";
        return result;
    }

    fs::path dir_;
    std::vector<std::uint8_t> plaintext_;
    std::vector<DataRun> runs_;
};

TEST_F(ReencryptTest, MatchesEncryptionUnderNewDek)
{
    SecureBytes old_dek = random_bytes(64);
    SecureBytes new_dek = random_bytes(64);

    FileBackedDisk direct = make_disk("direct");
    RewriteEngine(direct, new_dek, options()).start(plan(direct, Operation::encrypt));

    FileBackedDisk disk = make_disk("rekeyed");
    RewriteEngine(disk, old_dek, options()).start(plan(disk, Operation::encrypt));
    std::vector<std::uint8_t> under_old = data_of("rekeyed");
    RewriteEngine(disk, new_dek, options(), &old_dek).start(plan(disk, Operation::rekey));
    std::vector<std::uint8_t> under_new = data_of("rekeyed");

    EXPECT_EQ(under_new, data_of("direct"));
    for (std::size_t unit = 40; unit < 60; ++unit)
        EXPECT_TRUE(std::all_of(under_new.begin() + unit * 512, under_new.begin() + (unit + 1) * 512,
                                [](std::uint8_t b) { return b == 0; }))
            << "zero unit " << unit << " must stay zero";
    std::size_t same_as_old = 0;
    for (std::size_t unit = 0; unit < plaintext_.size() / 512; ++unit)
        if ((unit < 40 || unit >= 60) &&
            std::equal(under_new.begin() + unit * 512, under_new.begin() + (unit + 1) * 512, under_old.begin() + unit * 512))
            ++same_as_old;
    EXPECT_EQ(same_as_old, 0u);
}

TEST_F(ReencryptTest, StopAndResumeMatchesUninterruptedRun)
{
    SecureBytes old_dek = random_bytes(64);
    SecureBytes new_dek = random_bytes(64);
    FileBackedDisk direct = make_disk("direct");
    RewriteEngine(direct, new_dek, options()).start(plan(direct, Operation::encrypt));

    FileBackedDisk disk = make_disk("rekeyed");
    RewriteEngine(disk, old_dek, options()).start(plan(disk, Operation::encrypt));
    std::atomic<bool> stop{false};
    RewriteOptions stopping = options();
    stopping.stop_requested = &stop;
    stopping.on_progress = [&](const Progress& p) { stop = p.bytes_done >= 192 * 1024; };
    EXPECT_THROW(RewriteEngine(disk, new_dek, stopping, &old_dek).start(plan(disk, Operation::rekey)), Interrupted);

    Journal journal = Journal::open(dir_ / "rekeyed.meta.vmcrypt-journal", new_dek);
    EXPECT_EQ(journal.header().operation, Operation::rekey);
    RewriteEngine(disk, new_dek, options(), &old_dek).resume(std::move(journal), plan(disk, Operation::rekey).final_metadata);
    EXPECT_EQ(data_of("rekeyed"), data_of("direct"));
}

TEST_F(ReencryptTest, WithoutPreviousDekFails)
{
    SecureBytes dek = random_bytes(64);
    FileBackedDisk disk = make_disk("a");
    EXPECT_ANY_THROW(RewriteEngine(disk, dek, options()).start(plan(disk, Operation::rekey)));
}

// Key-slot changes through change_key_slots() on a file-backed disk with key files.
class KeySlotChangeTest : public ReencryptTest {
protected:
    fs::path key_file(const std::string& name)
    {
        fs::path path = dir_ / name;
        SecureBytes kek = random_bytes(32);
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(kek.data()), 32);
        return path;
    }

    // An encrypted record with one key-file slot under `kek`, written to the disk's metadata file.
    SecureBytes encrypt_record(const std::string& name, const fs::path& kek)
    {
        SecureBytes dek = random_bytes(64);
        FileBackedDisk disk = make_disk(name);
        KeyFileSource source(kek);
        EncryptionRecord record;
        record.state = RecordState::encrypted;
        record.tweak = "guest-sector";
        record.add_key_slot(seal_new_slot(source, dek));
        record.seal(dek);
        disk.apply(disk.record_update(record.to_fields()));
        return dek;
    }

    DiskOpener opener(const std::string& name)
    {
        return [this, name](const fs::path&, Access) -> std::unique_ptr<Disk> {
            return std::make_unique<FileBackedDisk>(dir_ / (name + ".meta"), dir_ / (name + ".data"), runs_);
        };
    }

    static KeySources sources(const fs::path& kek)
    {
        KeySources list;
        list.push_back(std::make_unique<KeyFileSource>(kek));
        return list;
    }

    EncryptionRecord record_of(const std::string& name)
    {
        return EncryptionRecord::from_fields(FileBackedDisk(dir_ / (name + ".meta"), dir_ / (name + ".data"), runs_)
                                                 .record()
                                                 .value(),
                                             name);
    }
};

TEST_F(KeySlotChangeTest, ShallowRekeyReplacesTheSlot)
{
    fs::path old_kek = key_file("old.key");
    fs::path new_kek = key_file("new.key");
    SecureBytes dek = encrypt_record("d", old_kek);
    KeySources unlock = sources(old_kek);
    KeySources seal = sources(new_kek);

    KeySlotReport report = change_key_slots(dir_ / "d.meta", unlock, seal, {SlotChange::replace, 0}, opener("d"));
    ASSERT_EQ(report.added.size(), 1u);
    ASSERT_EQ(report.removed.size(), 1u);
    EXPECT_EQ(report.added[0].id, 1u);
    EXPECT_EQ(report.removed[0].id, 0u);
    EXPECT_FALSE(report.added[0].created.empty());
    EXPECT_FALSE(fs::exists(dir_ / "d.meta.vmcrypt-journal"));

    KeySources with_new = sources(new_kek);
    KeySources with_old = sources(old_kek);
    EXPECT_EQ(unlock_dek(record_of("d").to_fields(), with_new, "d"), dek);
    EXPECT_EQ(exit_code_of([&] { unlock_dek(record_of("d").to_fields(), with_old, "d"); }), ExitCode::key_error);
}

TEST_F(KeySlotChangeTest, RekeyToSameKekIsRejected)
{
    fs::path kek = key_file("k.key");
    encrypt_record("d", kek);
    const std::string before = fields_to_text(record_of("d").to_fields());
    KeySources unlock = sources(kek);
    KeySources seal = sources(kek);
    try {
        change_key_slots(dir_ / "d.meta", unlock, seal, {SlotChange::replace, 0}, opener("d"));
        FAIL() << "a rekey to the same KEK must be rejected";
    } catch (const WrongDiskState& e) {
        EXPECT_NE(std::string(e.what()).find("would change nothing"), std::string::npos) << e.what();
    }
    EXPECT_EQ(fields_to_text(record_of("d").to_fields()), before);
}

TEST_F(KeySlotChangeTest, AddThenRemoveRoundTrip)
{
    fs::path first = key_file("first.key");
    fs::path second = key_file("second.key");
    SecureBytes dek = encrypt_record("d", first);
    const std::string before = fields_to_text(record_of("d").to_fields());

    KeySources unlock = sources(first);
    KeySources seal = sources(second);
    change_key_slots(dir_ / "d.meta", unlock, seal, {SlotChange::add, 0}, opener("d"));
    EXPECT_EQ(record_of("d").slot_ids(), (std::vector<std::uint32_t>{0, 1}));
    KeySources with_first = sources(first);
    KeySources with_second = sources(second);
    EXPECT_EQ(unlock_dek(record_of("d").to_fields(), with_first, "d"), dek);
    EXPECT_EQ(unlock_dek(record_of("d").to_fields(), with_second, "d"), dek);

    // Adding the same key again is rejected.
    KeySources again = sources(second);
    EXPECT_THROW(change_key_slots(dir_ / "d.meta", unlock, again, {SlotChange::add, 0}, opener("d")), WrongDiskState);

    KeySources none;
    KeySlotReport report = change_key_slots(dir_ / "d.meta", with_second, none, {SlotChange::remove, 1}, opener("d"));
    ASSERT_EQ(report.removed.size(), 1u);
    EXPECT_EQ(fields_to_text(record_of("d").to_fields()), before);
}

TEST_F(KeySlotChangeTest, AddBeyondSlotLimitNamesTheDisk)
{
    fs::path kek = key_file("k.key");
    SecureBytes dek = encrypt_record("d", kek);
    EncryptionRecord full = record_of("d");
    for (std::uint32_t i = 1; i < max_key_slots; ++i) {
        KeyFileSource filler(key_file("filler" + std::to_string(i) + ".key"));
        full.add_key_slot(seal_new_slot(filler, dek));
    }
    full.seal(dek);
    FileBackedDisk disk = make_disk("d");
    disk.apply(disk.record_update(full.to_fields()));
    const std::string before = fields_to_text(record_of("d").to_fields());

    KeySources unlock = sources(kek);
    KeySources seal = sources(key_file("new.key"));
    try {
        change_key_slots(dir_ / "d.meta", unlock, seal, {SlotChange::add, 0}, opener("d"));
        FAIL() << "a 33rd key slot must be rejected";
    } catch (const InvalidInput& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find((dir_ / "d.meta").string() + ": the encryption record has 32 key slots, and 1 more "
                               "would pass the maximum of 32"),
                  std::string::npos)
            << message;
    }
    EXPECT_EQ(fields_to_text(record_of("d").to_fields()), before);
}

TEST_F(KeySlotChangeTest, LastSlotRemovalIsRejected)
{
    fs::path kek = key_file("k.key");
    encrypt_record("d", kek);
    KeySources unlock = sources(kek);
    KeySources none;
    EXPECT_THROW(change_key_slots(dir_ / "d.meta", unlock, none, {SlotChange::remove, 0}, opener("d")), WrongDiskState);
    EXPECT_THROW(change_key_slots(dir_ / "d.meta", unlock, none, {SlotChange::remove, 4}, opener("d")), UsageError);
    EXPECT_EQ(record_of("d").slot_ids(), (std::vector<std::uint32_t>{0}));
}

TEST_F(KeySlotChangeTest, ChangeNeedsAKeyThatOpensTheDisk)
{
    fs::path kek = key_file("k.key");
    fs::path stranger = key_file("stranger.key");
    encrypt_record("d", kek);
    KeySources unlock = sources(stranger);
    KeySources seal = sources(key_file("new.key"));
    EXPECT_EQ(exit_code_of([&] { change_key_slots(dir_ / "d.meta", unlock, seal, {SlotChange::add, 0}, opener("d")); }),
              ExitCode::key_error);
    EXPECT_EQ(record_of("d").slot_ids(), (std::vector<std::uint32_t>{0}));
}

}  // namespace
}  // namespace vmcrypt
