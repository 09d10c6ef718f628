// The KMS configuration file: a valid file with defaults and relative paths, and each kind of invalid
// content rejected with the file and the member named.

#include "core/error.hpp"
#include "core/kmip/kms_config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace vmcrypt::kmip {
namespace {

class KmsConfigTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        folder_ = std::filesystem::temp_directory_path() /
                  ("vmcrypt-kms-config-" + std::to_string(::getpid()) + "-" +
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(folder_);
    }
    void TearDown() override { std::filesystem::remove_all(folder_); }

    std::filesystem::path write(const std::string& text)
    {
        std::filesystem::path file = folder_ / "kms.json";
        std::ofstream(file) << text;
        return file;
    }

    // The message of the InvalidInput that loading `text` raises, or "" when it loads.
    std::string load_error(const std::string& text)
    {
        try {
            KmsConfig::load(write(text));
        } catch (const InvalidInput& e) {
            return e.what();
        }
        return "";
    }

    std::filesystem::path folder_;
};

const std::string files = R"("ca": "ca.pem", "clientCertificate": "/etc/c.pem", "clientKey": "k.pem")";

TEST_F(KmsConfigTest, ValidFileGetsDefaults)
{
    std::filesystem::path file = write(R"({"providers": [{"id": "corp-kms", "servers": [{"host": "kms1"},
        {"host": "10.0.0.2", "port": 15696, "serverName": "kms.example"}], )" + files + R"(,
        "username": "vmcrypt", "passwordFile": "pw", "timeoutSeconds": 3}]})");
    KmsConfig config = KmsConfig::load(file);
    ASSERT_EQ(config.providers.size(), 1u);
    const KmsProvider& provider = config.provider("corp-kms");
    ASSERT_EQ(provider.servers.size(), 2u);
    EXPECT_EQ(provider.servers[0].address(), "kms1:5696");
    EXPECT_EQ(provider.servers[1].port, 15696);
    EXPECT_EQ(provider.servers[1].server_name, "kms.example");
    EXPECT_EQ(provider.ca_file, folder_ / "ca.pem");
    EXPECT_EQ(provider.client_certificate_file, "/etc/c.pem");
    EXPECT_EQ(provider.username, "vmcrypt");
    EXPECT_EQ(provider.password_file, folder_ / "pw");
    EXPECT_EQ(provider.timeout, std::chrono::seconds(3));
}

TEST_F(KmsConfigTest, UnknownProviderListsKnownIds)
{
    KmsConfig config = KmsConfig::load(
        write(R"({"providers": [{"id": "a", "servers": [{"host": "h"}], )" + files + "}]}"));
    try {
        config.provider("b");
        FAIL() << "no KeyUnavailable";
    } catch (const KeyUnavailable& e) {
        EXPECT_NE(std::string(e.what()).find("(the file has: a)"), std::string::npos) << e.what();
    }
}

TEST_F(KmsConfigTest, MissingFileIsKeyUnavailable)
{
    EXPECT_THROW(KmsConfig::load(folder_ / "absent.json"), KeyUnavailable);
}

TEST_F(KmsConfigTest, InvalidContentNamesMember)
{
    const std::string server = R"("servers": [{"host": "h"}])";
    struct Case {
        std::string text;
        std::string member;
    };
    std::vector<Case> cases{
        {"not json", "not valid JSON"},
        {"[]", "must be a JSON object"},
        {"{}", "providers must be a non-empty array"},
        {R"({"providers": [], "extra": 1})", "extra is not a known setting"},
        {R"({"providers": [{"servers": [{"host": "h"}], )" + files + "}]}", "providers[0].id is missing"},
        {R"({"providers": [{"id": "a b", )" + server + ", " + files + "}]}", "providers[0].id \"a b\" may contain"},
        {R"({"providers": [{"id": "a", "servers": [], )" + files + "}]}", "providers[0].servers must be"},
        {R"({"providers": [{"id": "a", "servers": [{"host": "h", "port": 0}], )" + files + "}]}",
         "providers[0].servers[0].port must be an integer from 1 to 65535"},
        {R"({"providers": [{"id": "a", "servers": [{"host": "h", "port": "5696"}], )" + files + "}]}",
         "providers[0].servers[0].port"},
        {R"({"providers": [{"id": "a", "servers": [{"hots": "h"}], )" + files + "}]}",
         "providers[0].servers[0].hots is not a known setting"},
        {R"({"providers": [{"id": "a", )" + server + R"(, "clientCertificate": "c", "clientKey": "k"}]})",
         "providers[0].ca is missing"},
        {R"({"providers": [{"id": "a", )" + server + ", " + files + R"(, "passwordFile": "p"}]})",
         "providers[0].passwordFile needs a \"username\""},
        {R"({"providers": [{"id": "a", )" + server + ", " + files + R"(, "password": "secret"}]})",
         "providers[0].password is not a known setting"},
        {R"({"providers": [{"id": "a", )" + server + ", " + files + R"(, "timeoutSeconds": 0}]})",
         "providers[0].timeoutSeconds must be an integer from 1 to 600"},
        {R"({"providers": [{"id": "a", )" + server + ", " + files + R"(}, {"id": "a", )" + server + ", " + files +
             "}]}",
         "providers[1].id \"a\" is used by two providers"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.text);
        std::string message = load_error(c.text);
        EXPECT_NE(message.find("kms.json: "), std::string::npos) << message;
        EXPECT_NE(message.find(c.member), std::string::npos) << message;
    }
}

TEST_F(KmsConfigTest, DefaultPathFollowsEnvironment)
{
    const char* old_explicit = std::getenv("VMCRYPT_KMS_CONFIG");
    const char* old_config_home = std::getenv("XDG_CONFIG_HOME");
    const std::string saved_explicit = old_explicit ? old_explicit : "";
    const std::string saved_config_home = old_config_home ? old_config_home : "";

    ::setenv("VMCRYPT_KMS_CONFIG", "/x/kms.json", 1);
    ::setenv("XDG_CONFIG_HOME", "/cfg", 1);
    EXPECT_EQ(default_kms_config_path(), "/x/kms.json");
    ::unsetenv("VMCRYPT_KMS_CONFIG");
    EXPECT_EQ(default_kms_config_path(), "/cfg/vmcrypt/kms.json");

    auto restore = [](const char* name, const char* old_value, const std::string& saved) {
        if (old_value)
            ::setenv(name, saved.c_str(), 1);
        else
            ::unsetenv(name);
    };
    restore("VMCRYPT_KMS_CONFIG", old_explicit, saved_explicit);
    restore("XDG_CONFIG_HOME", old_config_home, saved_config_home);
}

}  // namespace
}  // namespace vmcrypt::kmip
