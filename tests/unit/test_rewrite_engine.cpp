// Engine tests on real files: round trip, the zero-unit rule, interruption at window boundaries, and
// recovery of a half-rewritten window, compared byte for byte with an uninterrupted run.

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/crypto/random.hpp"
#include "core/crypto/unit_hash.hpp"
#include "core/crypto/xts.hpp"
#include "core/engine/rewrite_engine.hpp"
#include "core/engine/unit_transform.hpp"
#include "core/error.hpp"
#include "file_backed_disk.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

namespace vmcrypt {
namespace {

using test_support::FileBackedDisk;

namespace fs = std::filesystem;

constexpr std::uint64_t kib = 1024;

std::vector<std::uint8_t> read_all(const fs::path& path)
{
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& path, const std::vector<std::uint8_t>& bytes)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

class RewriteEngineTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        dir_ = fs::temp_directory_path() / ("vmcrypt-engine-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);

        // 1 MiB of random data with an all-zero stretch (units 100..139) and a gap that is not a run.
        plaintext_.resize(1024 * kib);
        std::mt19937_64 rng(42);
        for (auto& byte : plaintext_)
            byte = static_cast<std::uint8_t>(rng());
        std::fill(plaintext_.begin() + 100 * 512, plaintext_.begin() + 140 * 512, 0);

        // Runs: [0, 600 KiB) at sector 1000, and [640 KiB, 1 MiB) at sector 5000; 600..640 KiB is metadata.
        runs_ = {{1, 0, 600 * kib, 1000}, {1, 640 * kib, 384 * kib, 5000}};

        dek_ = random_bytes(64);
    }

    void TearDown() override { fs::remove_all(dir_); }

    // A fresh pair of files (metadata, data) named by `name`, holding the plaintext.
    FileBackedDisk make_disk(const std::string& name)
    {
        fs::path metadata = dir_ / (name + ".meta");
        fs::path data = dir_ / (name + ".data");
        write_all(metadata, {});
        write_all(data, plaintext_);
        return FileBackedDisk(metadata, data, runs_);
    }

    RewritePlan plan(FileBackedDisk& disk, Operation operation)
    {
        RewritePlan result;
        result.operation = operation;
        RecordFields start = {{"state", "working"}};
        RecordFields done = {{"state", "done"}};
        result.start_metadata = disk.record_update(start);
        result.final_metadata = disk.record_update(done);
        result.journal_record = done;
        return result;
    }

    RewriteOptions options(std::uint64_t window)
    {
        RewriteOptions result;
        result.window_size = window;
        result.resume_command = "test";
        return result;
    }

    // Returns options for 64 KiB windows that set `stop` at the first progress report of `stop_at`
    // bytes or more. Both are read when the engine reports, so a test may change them between runs.
    RewriteOptions stopping_options(std::atomic<bool>& stop, const std::uint64_t& stop_at)
    {
        RewriteOptions stopping = options(64 * kib);
        stopping.stop_requested = &stop;
        stopping.on_progress = [&stop, &stop_at](const Progress& p) {
            if (p.bytes_done >= stop_at)
                stop = true;
        };
        return stopping;
    }

    // Starts an encrypt of `disk` in 64 KiB windows and stops it at the first window boundary after
    // `stop_at` bytes are rewritten.
    void encrypt_until_stopped(FileBackedDisk& disk, std::uint64_t stop_at)
    {
        std::atomic<bool> stop{false};
        RewriteOptions stopping = stopping_options(stop, stop_at);
        EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);
    }

    fs::path dir_;
    std::vector<std::uint8_t> plaintext_;
    std::vector<DataRun> runs_;
    SecureBytes dek_;

};

TEST_F(RewriteEngineTest, EncryptThenDecryptRestoresData)
{
    FileBackedDisk disk = make_disk("a");
    RewriteEngine(disk, dek_, options(64 * kib)).start(plan(disk, Operation::encrypt));
    std::vector<std::uint8_t> encrypted = read_all(dir_ / "a.data");
    EXPECT_FALSE(fs::exists(dir_ / "a.meta.vmcrypt-journal"));
    EXPECT_EQ(disk.record()->front().second, "done");

    RewriteEngine(disk, dek_, options(64 * kib)).start(plan(disk, Operation::decrypt));
    EXPECT_EQ(read_all(dir_ / "a.data"), plaintext_);

    // Every non-zero unit inside a run changed, zero units stayed zero, the gap was never touched.
    for (std::size_t unit = 0; unit < plaintext_.size() / 512; ++unit) {
        bool in_gap = unit * 512 >= 600 * kib && unit * 512 < 640 * kib;
        bool zero = unit >= 100 && unit < 140;
        bool same = std::equal(encrypted.begin() + unit * 512, encrypted.begin() + (unit + 1) * 512,
                               plaintext_.begin() + unit * 512);
        if (in_gap || zero)
            EXPECT_TRUE(same) << "unit " << unit << " must be unchanged";
        else
            EXPECT_FALSE(same) << "unit " << unit << " must be encrypted";
    }
}

TEST_F(RewriteEngineTest, CiphertextUsesRunSectorsAsTweaks)
{
    FileBackedDisk disk = make_disk("a");
    RewriteEngine(disk, dek_, options(64 * kib)).start(plan(disk, Operation::encrypt));
    std::vector<std::uint8_t> encrypted = read_all(dir_ / "a.data");

    // The unit at 640 KiB is the first of the second run: sector 5000.
    std::vector<std::uint8_t> unit(plaintext_.begin() + 640 * kib, plaintext_.begin() + 640 * kib + 512);
    XtsCipher(dek_).encrypt_units(unit, 5000);
    EXPECT_TRUE(std::equal(unit.begin(), unit.end(), encrypted.begin() + 640 * kib));
}

TEST_F(RewriteEngineTest, DecryptsWithCipherOfRecord)
{
    // Data under AES-128-CBC with the run sectors as IVs, as a legacy qcow AES image stores it.
    const SecureBytes key = random_bytes(16);
    std::vector<std::uint8_t> encrypted = plaintext_;
    for (const DataRun& run : runs_)
        AesCbcPlain64(key).encrypt_units({encrypted.data() + run.host_offset, run.length}, run.first_sector);
    FileBackedDisk disk = make_disk("cbc");
    write_all(dir_ / "cbc.data", encrypted);

    RewritePlan decrypt = plan(disk, Operation::decrypt);
    decrypt.journal_record.emplace_back("cipher", cipher_aes_cbc_plain64);
    RewriteEngine(disk, key, options(64 * kib)).start(decrypt);
    EXPECT_EQ(read_all(dir_ / "cbc.data"), plaintext_);

    // vmcrypt never writes CBC ciphertext.
    RewritePlan encrypt = plan(disk, Operation::encrypt);
    encrypt.journal_record.emplace_back("cipher", cipher_aes_cbc_plain64);
    EXPECT_THROW(RewriteEngine(disk, key, options(64 * kib)).start(encrypt), InvalidInput);
    EXPECT_EQ(read_all(dir_ / "cbc.data"), plaintext_);
}

TEST_F(RewriteEngineTest, WindowSizeDoesNotChangeResult)
{
    FileBackedDisk small = make_disk("small");
    FileBackedDisk large = make_disk("large");
    RewriteEngine(small, dek_, options(4 * kib)).start(plan(small, Operation::encrypt));
    RewriteEngine(large, dek_, options(1024 * kib)).start(plan(large, Operation::encrypt));
    EXPECT_EQ(read_all(dir_ / "small.data"), read_all(dir_ / "large.data"));
}

// Runs of 1 MiB or more are read through a file mapping and transformed out of place; shorter ones are
// read into the window buffer. Both must give the ciphertext of an independent XTS over each run, with
// zero units kept, whatever the window size and wherever the windows cut the runs.
TEST_F(RewriteEngineTest, MappedAndReadRunsGiveTheSameCiphertext)
{
    std::vector<std::uint8_t> plaintext(4096 * kib);
    std::mt19937_64 rng(7);
    for (auto& byte : plaintext)
        byte = static_cast<std::uint8_t>(rng());
    std::fill(plaintext.begin() + 300 * 512, plaintext.begin() + 310 * 512, 0);    // in the first long run
    std::fill(plaintext.begin() + 4200 * 512, plaintext.begin() + 4203 * 512, 0);  // in the short run

    // A long run at a host offset that is not page-aligned, a short one, and a long one to the end.
    const std::vector<DataRun> runs = {{1, 4 * kib + 512, 2044 * kib - 512, 7},
                                       {1, 2048 * kib + 64 * kib, 64 * kib, 9000},
                                       {1, 2048 * kib + 192 * kib, 1856 * kib, 20000}};
    std::vector<std::uint8_t> expected = plaintext;
    const XtsCipher cipher(dek_);
    for (const DataRun& run : runs)
        for (std::uint64_t unit = 0; unit < run.length / 512; ++unit) {
            std::span<std::uint8_t> bytes(expected.data() + run.host_offset + unit * 512, 512);
            if (!is_zero_unit(bytes))
                cipher.encrypt_units(bytes, run.first_sector + unit);
        }

    for (std::uint64_t window : {256 * kib, 1024 * kib, 3 * 1024 * kib + 512}) {
        const std::string name = "w" + std::to_string(window);
        write_all(dir_ / (name + ".meta"), {});
        write_all(dir_ / (name + ".data"), plaintext);
        FileBackedDisk disk(dir_ / (name + ".meta"), dir_ / (name + ".data"), runs);

        RewriteEngine(disk, dek_, options(window)).start(plan(disk, Operation::encrypt));
        EXPECT_EQ(read_all(dir_ / (name + ".data")), expected) << "window " << window;

        RewriteEngine(disk, dek_, options(window)).start(plan(disk, Operation::decrypt));
        EXPECT_EQ(read_all(dir_ / (name + ".data")), plaintext) << "window " << window;
    }
}

// Transforming from a separate source gives the same bytes as transforming in place, in every direction,
// with zero units and a selection.
TEST(UnitTransform, SeparateSourceEqualsInPlace)
{
    const SecureBytes dek = random_bytes(64);
    const SecureBytes previous_dek = random_bytes(64);
    const XtsCipher cipher(dek);
    const XtsCipher previous(previous_dek);
    const XtsCipher botan_cipher(dek, XtsBackend::botan_aes);

    std::vector<std::uint8_t> old_content(200 * 512);
    std::mt19937_64 rng(11);
    for (auto& byte : old_content)
        byte = static_cast<std::uint8_t>(rng());
    std::fill(old_content.begin() + 20 * 512, old_content.begin() + 23 * 512, 0);
    const std::vector<RunSegment> segments = {{0, 0, 120 * 512, 40, 0}, {0, 0, 80 * 512, 900, 120 * 512}};
    std::vector<bool> selected(200, true);
    selected[5] = selected[150] = false;

    for (const UnitCipher* unit_cipher : {static_cast<const UnitCipher*>(&cipher), static_cast<const UnitCipher*>(&botan_cipher)})
        for (Direction direction : {Direction::encrypt, Direction::decrypt, Direction::reencrypt})
            for (ZeroUnits zero_units : {ZeroUnits::kept, ZeroUnits::transformed}) {
                std::vector<std::uint8_t> in_place = old_content;
                transform_units(*unit_cipher, direction, in_place, segments, selected, 10, 190, nullptr, zero_units,
                                &previous);

                std::vector<std::uint8_t> out_of_place = old_content;
                std::fill(out_of_place.begin() + 10 * 512, out_of_place.begin() + 190 * 512, 0xee);
                transform_units(*unit_cipher, direction, out_of_place, segments, selected, 10, 190, nullptr,
                                zero_units, &previous, old_content.data() + 10 * 512);
                EXPECT_EQ(out_of_place, in_place) << "direction " << static_cast<int>(direction) << ", zero units "
                                                  << static_cast<int>(zero_units);
            }
}

TEST_F(RewriteEngineTest, StopAtWindowBoundaryThenResume)
{
    FileBackedDisk reference = make_disk("reference");
    RewriteEngine(reference, dek_, options(64 * kib)).start(plan(reference, Operation::encrypt));

    FileBackedDisk disk = make_disk("a");
    std::atomic<bool> stop{false};
    RewriteOptions stopping = options(64 * kib);
    stopping.stop_requested = &stop;
    stopping.on_progress = [&](const Progress& p) {
        if (p.bytes_done >= 256 * kib)
            stop = true;
    };
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);
    ASSERT_TRUE(fs::exists(dir_ / "a.meta.vmcrypt-journal"));
    EXPECT_EQ(disk.record()->front().second, "working");

    Journal journal = Journal::open(dir_ / "a.meta.vmcrypt-journal", dek_);
    RewriteEngine(disk, dek_, options(64 * kib)).resume(std::move(journal), plan(disk, Operation::encrypt).final_metadata);
    EXPECT_EQ(read_all(dir_ / "a.data"), read_all(dir_ / "reference.data"));
    EXPECT_FALSE(fs::exists(dir_ / "a.meta.vmcrypt-journal"));
}

// A crash in the middle of a window: the journal names the window, half of its units are rewritten.
// Recovery must finish exactly the other half, and running it twice must change nothing more.
TEST_F(RewriteEngineTest, RecoversHalfWrittenWindowIdempotently)
{
    const std::uint64_t window = 64 * kib;
    FileBackedDisk reference = make_disk("reference");
    RewriteEngine(reference, dek_, options(window)).start(plan(reference, Operation::encrypt));

    FileBackedDisk disk = make_disk("a");
    std::atomic<bool> stop{false};
    RewriteOptions stopping = options(window);
    stopping.stop_requested = &stop;
    stopping.on_progress = [&](const Progress& p) {
        if (p.bytes_done >= window)
            stop = true;
    };
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);

    // Journal window 2 (stream bytes [64 KiB, 128 KiB) = data file bytes of the first run), as the engine would.
    fs::path journal_path = dir_ / "a.meta.vmcrypt-journal";
    {
        Journal journal = Journal::open(journal_path, dek_);
        journal.newest();
        std::vector<std::uint8_t> data = read_all(dir_ / "a.data");
        JournalEntry entry;
        entry.phase = JournalPhase::window;
        entry.window_start = window;
        entry.window_length = window;
        entry.unit_hashes.resize(window / 512);
        hash_units({data.data() + window, window}, entry.unit_hashes);
        journal.append(entry);

        // Rewrite the first half of the window's units as the engine does (zero units stay zero), then
        // "crash".
        XtsCipher cipher(dek_);
        for (std::uint64_t unit = window / 512; unit < window / 512 + window / 1024; ++unit) {
            std::span<std::uint8_t> bytes(data.data() + unit * 512, 512);
            if (!is_zero_unit(bytes))
                cipher.encrypt_units(bytes, 1000 + unit);
        }
        write_all(dir_ / "a.data", data);
    }

    // First recovery stops right after redoing the window; the second finds it done and continues.
    stop = false;
    RewriteOptions stop_after_recovery = options(window);
    std::atomic<bool> stop_now{true};
    stop_after_recovery.stop_requested = &stop_now;
    EXPECT_THROW(RewriteEngine(disk, dek_, stop_after_recovery)
                     .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata),
                 Interrupted);
    std::vector<std::uint8_t> after_first = read_all(dir_ / "a.data");
    std::vector<std::uint8_t> expected = read_all(dir_ / "reference.data");
    EXPECT_TRUE(std::equal(after_first.begin() + window, after_first.begin() + 2 * window, expected.begin() + window));

    RewriteEngine(disk, dek_, options(window))
        .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata);
    EXPECT_EQ(read_all(dir_ / "a.data"), expected);
    EXPECT_EQ(disk.record()->front().second, "done");
}

TEST_F(RewriteEngineTest, StopBeforeStartChangesNothing)
{
    FileBackedDisk disk = make_disk("a");
    std::atomic<bool> stop{true};
    RewriteOptions stopping = options(64 * kib);
    stopping.stop_requested = &stop;
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);
    EXPECT_FALSE(fs::exists(dir_ / "a.meta.vmcrypt-journal"));
    EXPECT_FALSE(disk.record().has_value());
    EXPECT_EQ(read_all(dir_ / "a.data"), plaintext_);
}

// A crash between syncing an entry's body and writing its header sector: the slot keeps its older
// header (for entry 2, the placeholder written with the journal) and the window's data was not written.
TEST_F(RewriteEngineTest, TornFirstWindowEntryFallsBackToStart)
{
    FileBackedDisk disk = make_disk("a");
    fs::path journal_path = dir_ / "a.meta.vmcrypt-journal";
    std::atomic<bool> stop{false};
    std::uint64_t stop_at = 0;
    RewriteOptions stopping = stopping_options(stop, stop_at);
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);
    const std::vector<std::uint8_t> with_placeholder = read_all(journal_path);
    ASSERT_EQ(Journal::open(journal_path, dek_).newest().sequence, 1u);

    stop = false;
    stop_at = 64 * kib;
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping)
                     .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata),
                 Interrupted);
    // Entry 2 (window 0, slot 0) and entry 3 (window 1, journaled while window 0 was written, slot 1).
    ASSERT_EQ(Journal::open(journal_path, dek_).newest().sequence, 3u);

    // A crash after entry 2's body sync and before its header write: slot 0 has the placeholder header
    // over entry 2's body, slot 1 still has entry 1, and window 0 is plaintext.
    std::vector<std::uint8_t> data = read_all(dir_ / "a.data");
    std::copy(plaintext_.begin(), plaintext_.begin() + 64 * kib, data.begin());
    write_all(dir_ / "a.data", data);
    std::vector<std::uint8_t> bytes = read_all(journal_path);
    const std::uint64_t slot_size = (bytes.size() - 8192) / 2;
    std::copy(with_placeholder.begin() + 8192, with_placeholder.begin() + 8192 + 512, bytes.begin() + 8192);
    std::copy(with_placeholder.begin() + 8192 + slot_size, with_placeholder.end(), bytes.begin() + 8192 + slot_size);
    write_all(journal_path, bytes);

    JournalEntry fallback = Journal::open(journal_path, dek_).newest();
    EXPECT_EQ(fallback.sequence, 1u);
    EXPECT_EQ(fallback.phase, JournalPhase::metadata);

    // An all-zero header sector is damage, not a slot that was never written.
    std::vector<std::uint8_t> zeroed = bytes;
    std::fill(zeroed.begin() + 8192, zeroed.begin() + 8192 + 512, 0);
    write_all(journal_path, zeroed);
    EXPECT_THROW(Journal::open(journal_path, dek_).newest(), InvalidInput);
    write_all(journal_path, bytes);

    FileBackedDisk reference = make_disk("reference");
    RewriteEngine(reference, dek_, options(64 * kib)).start(plan(reference, Operation::encrypt));
    RewriteEngine(disk, dek_, options(64 * kib))
        .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata);
    EXPECT_EQ(read_all(dir_ / "a.data"), read_all(dir_ / "reference.data"));
}

TEST_F(RewriteEngineTest, TornJournalEntryFallsBackToPrevious)
{
    FileBackedDisk disk = make_disk("a");
    fs::path journal_path = dir_ / "a.meta.vmcrypt-journal";
    std::atomic<bool> stop{false};
    std::uint64_t stop_at = 0;
    RewriteOptions stopping = stopping_options(stop, stop_at);
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);
    std::vector<std::uint8_t> before = read_all(journal_path);  // entry 1 in slot 1, the placeholder in slot 0

    stop = false;
    stop_at = 64 * kib;
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping)
                     .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata),
                 Interrupted);
    // Entry 2 (window 0, written, slot 0) and entry 3 (window 1, journaled while window 0 was written).
    ASSERT_EQ(Journal::open(journal_path, dek_).newest().sequence, 3u);

    // Undo entry 3's header sector (slot 1 shows entry 1's header again over entry 3's body), as a crash
    // right after entry 3's body sync leaves it. Window 1 is still plaintext.
    std::vector<std::uint8_t> bytes = read_all(journal_path);
    std::uint64_t slot_size = (bytes.size() - 8192) / 2;
    std::copy(before.begin() + 8192 + slot_size, before.begin() + 8192 + slot_size + 512,
              bytes.begin() + 8192 + slot_size);
    write_all(journal_path, bytes);
    std::vector<std::uint8_t> data = read_all(dir_ / "a.data");
    ASSERT_TRUE(std::equal(plaintext_.begin() + 64 * kib, plaintext_.begin() + 128 * kib, data.begin() + 64 * kib));

    Journal torn = Journal::open(journal_path, dek_);
    JournalEntry fallback = torn.newest();
    EXPECT_EQ(fallback.sequence, 2u);
    EXPECT_EQ(fallback.window_start, 0u);
    EXPECT_FALSE(torn.window_before_newest());  // entry 1 is the start metadata

    FileBackedDisk reference = make_disk("reference");
    RewriteEngine(reference, dek_, options(64 * kib)).start(plan(reference, Operation::encrypt));
    RewriteEngine(disk, dek_, options(64 * kib))
        .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata);
    EXPECT_EQ(read_all(dir_ / "a.data"), read_all(dir_ / "reference.data"));
}

// Damage that no crash explains (a changed newest header or body, a changed older header) must stop the
// resume: falling back to the older entry could rewrite a finished window a second time.
TEST_F(RewriteEngineTest, DamagedJournalEntryIsReported)
{
    FileBackedDisk disk = make_disk("a");
    fs::path journal_path = dir_ / "a.meta.vmcrypt-journal";
    encrypt_until_stopped(disk, 128 * kib);
    const std::vector<std::uint8_t> intact = read_all(journal_path);
    const std::uint64_t slot_size = (intact.size() - 8192) / 2;
    ASSERT_EQ(Journal::open(journal_path, dek_).newest().sequence, 4u);  // slot 0; entry 3 in slot 1

    struct Damage {
        const char* name;
        std::uint64_t offset;
    };
    const Damage cases[] = {
        {"newest header", 8192 + 20},
        {"newest body", 8192 + 512 + 100},
        {"older header", 8192 + slot_size + 20},
    };
    for (const Damage& damage : cases) {
        std::vector<std::uint8_t> bytes = intact;
        bytes[damage.offset] ^= 0x40;
        write_all(journal_path, bytes);
        EXPECT_THROW(Journal::open(journal_path, dek_).newest(), InvalidInput) << damage.name;
    }

    // A changed body of the older entry is what a torn append leaves, and is not damage.
    std::vector<std::uint8_t> bytes = intact;
    bytes[8192 + slot_size + 512 + 100] ^= 0x40;
    write_all(journal_path, bytes);
    Journal torn = Journal::open(journal_path, dek_);
    EXPECT_EQ(torn.newest().sequence, 4u);
    EXPECT_FALSE(torn.window_before_newest());
}

// The window before the newest entry's may be partly written: the engine journals a window while the
// one before it is still being written. A resume must finish both.
TEST_F(RewriteEngineTest, WindowBeforeNewestIsRecovered)
{
    FileBackedDisk disk = make_disk("a");
    fs::path journal_path = dir_ / "a.meta.vmcrypt-journal";
    encrypt_until_stopped(disk, 64 * kib);
    Journal journal = Journal::open(journal_path, dek_);
    ASSERT_EQ(journal.newest().window_start, 64 * kib);
    std::optional<JournalEntry> before = journal.window_before_newest();
    ASSERT_TRUE(before);
    EXPECT_EQ(before->window_start, 0u);

    // Window 0 as a crash before its sync can leave it: its first half still plaintext.
    std::vector<std::uint8_t> data = read_all(dir_ / "a.data");
    std::copy(plaintext_.begin(), plaintext_.begin() + 32 * kib, data.begin());
    write_all(dir_ / "a.data", data);

    FileBackedDisk reference = make_disk("reference");
    RewriteEngine(reference, dek_, options(64 * kib)).start(plan(reference, Operation::encrypt));
    RewriteEngine(disk, dek_, options(64 * kib))
        .resume(Journal::open(journal_path, dek_), plan(disk, Operation::encrypt).final_metadata);
    EXPECT_EQ(read_all(dir_ / "a.data"), read_all(dir_ / "reference.data"));
}

TEST_F(RewriteEngineTest, JournalWithOtherKeyIsRejected)
{
    FileBackedDisk disk = make_disk("a");
    std::atomic<bool> stop{false};
    RewriteOptions stopping = options(64 * kib);
    stopping.stop_requested = &stop;
    stopping.on_progress = [&](const Progress&) { stop = true; };
    EXPECT_THROW(RewriteEngine(disk, dek_, stopping).start(plan(disk, Operation::encrypt)), Interrupted);

    SecureBytes other = random_bytes(64);
    EXPECT_THROW(Journal::open(dir_ / "a.meta.vmcrypt-journal", other), InvalidInput);
}

}  // namespace
}  // namespace vmcrypt
