// Key source tests on real files: the key store's permission rules, KEK file forms, wrong keys.

#include "core/crypto/random.hpp"
#include "core/error.hpp"
#include "core/keys/key_file_source.hpp"
#include "core/keys/key_store.hpp"
#include "core/keys/passphrase_source.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sys/stat.h>

namespace vmcrypt {
namespace {

namespace fs = std::filesystem;

class KeySourceTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        dir_ = fs::temp_directory_path() / ("vmcrypt-keys-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        dek_ = random_bytes(64);
    }
    void TearDown() override { fs::remove_all(dir_); }

    void write_file(const fs::path& path, const std::string& content, mode_t mode)
    {
        std::ofstream(path, std::ios::binary) << content;
        ::chmod(path.c_str(), mode);
    }

    fs::path dir_;
    SecureBytes dek_;
};

TEST_F(KeySourceTest, KeyStoreCreatesPrivateKekAndUnseals)
{
    fs::path store = dir_ / "store";
    KeyStoreSource source(store, std::nullopt);
    source.check_ready();
    KeySlot slot = source.seal(dek_);

    struct stat st {};
    ASSERT_EQ(::stat(store.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    fs::path kek_file = store / (slot.params.at("kek") + ".kek");
    ASSERT_EQ(::stat(kek_file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_FALSE(fs::exists(store / (slot.params.at("kek") + ".kek.tmp")));

    EXPECT_EQ(KeyStoreSource(store, std::nullopt).unseal(slot), dek_);
}

TEST_F(KeySourceTest, KeyStoreRejectsOpenPermissionsWithChmodHint)
{
    fs::path store = dir_ / "store";
    KeyStoreSource source(store, std::nullopt);
    KeySlot slot = source.seal(dek_);

    ::chmod(store.c_str(), 0755);
    try {
        KeyStoreSource(store, std::nullopt).unseal(slot);
        FAIL() << "a 0755 key store was accepted";
    } catch (const KeyUnavailable& e) {
        EXPECT_NE(std::string(e.what()).find("chmod 700"), std::string::npos) << e.what();
    }
    ::chmod(store.c_str(), 0700);

    fs::path kek_file = store / (slot.params.at("kek") + ".kek");
    ::chmod(kek_file.c_str(), 0644);
    try {
        KeyStoreSource(store, std::nullopt).unseal(slot);
        FAIL() << "a 0644 KEK file was accepted";
    } catch (const KeyUnavailable& e) {
        EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
    }
}

TEST_F(KeySourceTest, KeyStoreMissingKekIsUnavailable)
{
    fs::path store = dir_ / "store";
    KeySlot slot = KeyStoreSource(store, std::nullopt).seal(dek_);
    fs::remove(store / (slot.params.at("kek") + ".kek"));
    EXPECT_THROW(KeyStoreSource(store, std::nullopt).unseal(slot), KeyUnavailable);
}

TEST_F(KeySourceTest, KeyFileAcceptsRawAndHex)
{
    SecureBytes kek = random_bytes(32);
    write_file(dir_ / "raw.key", std::string(kek.begin(), kek.end()), 0600);
    static const char* digits = "0123456789abcdef";
    std::string hex;
    for (std::uint8_t byte : kek) {
        hex += digits[byte >> 4];
        hex += digits[byte & 15];
    }
    write_file(dir_ / "hex.key", hex + "\n", 0600);

    KeySlot slot = KeyFileSource(dir_ / "raw.key").seal(dek_);
    EXPECT_EQ(KeyFileSource(dir_ / "hex.key").unseal(slot), dek_);

    write_file(dir_ / "short.key", hex.substr(2), 0600);
    EXPECT_THROW(KeyFileSource(dir_ / "short.key").check_ready(), KeyUnavailable);

    SecureBytes other = random_bytes(32);
    write_file(dir_ / "other.key", std::string(other.begin(), other.end()), 0600);
    EXPECT_THROW(KeyFileSource(dir_ / "other.key").unseal(slot), WrongKey);
}

TEST_F(KeySourceTest, PassphraseWrongIsWrongKey)
{
    Argon2Parameters cheap{1024, 1, 1};
    std::string right = "correct horse battery staple";
    KeySlot slot = PassphraseSource(SecureBytes(right.begin(), right.end()), "test", cheap).seal(dek_);
    EXPECT_EQ(slot.params.at("m"), "1024");
    EXPECT_EQ(PassphraseSource(SecureBytes(right.begin(), right.end()), "test", {}).unseal(slot), dek_);

    std::string wrong = "correct horse battery stapler";
    EXPECT_THROW(PassphraseSource(SecureBytes(wrong.begin(), wrong.end()), "test", {}).unseal(slot), WrongKey);
}

}  // namespace
}  // namespace vmcrypt
