#include "core/kmip/kms_config.hpp"

#include "core/error.hpp"
#include "core/io/file.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <set>
#include <sys/stat.h>

namespace vmcrypt::kmip {

namespace {

using Json = nlohmann::json;

constexpr std::size_t max_config_bytes = 1 << 20;
constexpr int max_timeout_seconds = 600;

class FieldReader {
public:
    FieldReader(const Json& object, std::string where, const std::filesystem::path& file)
        : object_(object), where_(std::move(where)), file_(file)
    {
        if (!object_.is_object())
            fail(where_, "must be a JSON object");
    }

    [[noreturn]] void fail(const std::string& field, const std::string& problem) const
    {
        throw InvalidInput(file_.string() + ": " + field + " " + problem);
    }

    std::string field(const std::string& name) const { return where_.empty() ? name : where_ + "." + name; }

    // Rejects keys outside `known`, so a misspelt key is reported instead of silently ignored.
    void only(const std::set<std::string>& known) const
    {
        for (const auto& [key, value] : object_.items())
            if (!known.contains(key)) {
                std::string list;
                for (const std::string& name : known)
                    list += (list.empty() ? "" : ", ") + name;
                fail(field(key), "is not a known setting (expected one of: " + list + ")");
            }
    }

    const Json* find(const std::string& name) const
    {
        auto it = object_.find(name);
        return it == object_.end() ? nullptr : &*it;
    }

    std::string text(const std::string& name, bool required) const
    {
        const Json* value = find(name);
        if (!value) {
            if (required)
                fail(field(name), "is missing");
            return {};
        }
        if (!value->is_string() || value->get<std::string>().empty())
            fail(field(name), "must be a non-empty string");
        return value->get<std::string>();
    }

    std::filesystem::path path(const std::string& name, bool required) const
    {
        std::string value = text(name, required);
        if (value.empty())
            return {};
        std::filesystem::path result(value);
        return result.is_absolute() ? result : file_.parent_path() / result;
    }

    std::optional<std::int64_t> integer(const std::string& name, std::int64_t low, std::int64_t high) const
    {
        const Json* value = find(name);
        if (!value)
            return std::nullopt;
        if (!value->is_number_integer() || value->get<std::int64_t>() < low || value->get<std::int64_t>() > high)
            fail(field(name), "must be an integer from " + std::to_string(low) + " to " + std::to_string(high));
        return value->get<std::int64_t>();
    }

private:
    const Json& object_;
    std::string where_;
    const std::filesystem::path& file_;
};

KmsServer parse_server(const Json& json, const std::string& where, const std::filesystem::path& file)
{
    FieldReader reader(json, where, file);
    reader.only({"host", "port", "serverName"});
    KmsServer server;
    server.host = reader.text("host", true);
    server.port = static_cast<std::uint16_t>(reader.integer("port", 1, 65535).value_or(5696));
    server.server_name = reader.text("serverName", false);
    return server;
}

KmsProvider parse_provider(const Json& json, const std::string& where, const std::filesystem::path& file)
{
    FieldReader reader(json, where, file);
    reader.only({"id", "servers", "ca", "clientCertificate", "clientKey", "username", "passwordFile",
                 "timeoutSeconds"});
    KmsProvider provider;
    provider.id = reader.text("id", true);
    if (!is_valid_provider_id(provider.id))
        reader.fail(reader.field("id"), "\"" + provider.id + "\" may contain only letters, digits, '.', '_' and '-'");

    const Json* servers = reader.find("servers");
    if (!servers || !servers->is_array() || servers->empty())
        reader.fail(reader.field("servers"), "must be a non-empty array of {\"host\": ..., \"port\": ...}");
    for (std::size_t i = 0; i < servers->size(); ++i)
        provider.servers.push_back(parse_server((*servers)[i], reader.field("servers[" + std::to_string(i) + "]"), file));

    provider.ca_file = reader.path("ca", true);
    provider.client_certificate_file = reader.path("clientCertificate", true);
    provider.client_key_file = reader.path("clientKey", true);
    if (std::string username = reader.text("username", false); !username.empty())
        provider.username = username;
    if (std::filesystem::path password = reader.path("passwordFile", false); !password.empty()) {
        if (!provider.username)
            reader.fail(reader.field("passwordFile"), "needs a \"username\" to go with it");
        provider.password_file = password;
    }
    if (auto seconds = reader.integer("timeoutSeconds", 1, max_timeout_seconds))
        provider.timeout = std::chrono::seconds(*seconds);
    return provider;
}

}  // namespace

std::string KmsServer::address() const
{
    bool ipv6 = host.find(':') != std::string::npos;
    return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool is_valid_provider_id(const std::string& id)
{
    if (id.empty() || id.size() > 64)
        return false;
    for (char c : id) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

std::filesystem::path default_kms_config_path()
{
    if (const char* explicit_path = std::getenv("VMCRYPT_KMS_CONFIG"); explicit_path && *explicit_path)
        return explicit_path;
    if (const char* config_home = std::getenv("XDG_CONFIG_HOME"); config_home && *config_home)
        return std::filesystem::path(config_home) / "vmcrypt" / "kms.json";
    const char* home = std::getenv("HOME");
    return std::filesystem::path(home && *home ? home : ".") / ".config" / "vmcrypt" / "kms.json";
}

KmsConfig KmsConfig::load(const std::filesystem::path& file)
{
    std::error_code ec;
    if (!std::filesystem::exists(file, ec))
        throw KeyUnavailable(file.string() + ": KMS configuration not found; create it (see vmcrypt-kms(1)) or "
                             "point --kms-config or VMCRYPT_KMS_CONFIG at it");
    std::string text;
    try {
        text = read_small_file(file, max_config_bytes);
    } catch (const Error& e) {
        throw KeyUnavailable(std::string(e.what()) + " (the KMS configuration)");
    }

    Json json;
    try {
        json = Json::parse(text);
    } catch (const Json::parse_error& e) {
        throw InvalidInput(file.string() + ": the KMS configuration is not valid JSON (" + e.what() + ")");
    }

    KmsConfig config;
    config.file = file;
    FieldReader top(json, "", file);
    top.only({"providers"});
    const Json* providers = top.find("providers");
    if (!providers || !providers->is_array() || providers->empty())
        top.fail("providers", "must be a non-empty array of providers");
    std::set<std::string> ids;
    for (std::size_t i = 0; i < providers->size(); ++i) {
        std::string where = "providers[" + std::to_string(i) + "]";
        KmsProvider provider = parse_provider((*providers)[i], where, file);
        if (!ids.insert(provider.id).second)
            top.fail(where + ".id", "\"" + provider.id + "\" is used by two providers");
        config.providers.push_back(std::move(provider));
    }
    return config;
}

const KmsProvider& KmsConfig::provider(const std::string& id) const
{
    std::string known;
    for (const KmsProvider& provider : providers) {
        if (provider.id == id)
            return provider;
        known += (known.empty() ? "" : ", ") + provider.id;
    }
    throw KeyUnavailable(file.string() + ": no KMS provider \"" + id + "\" (the file has: " + known + ")");
}

SecureBytes read_kms_password(const KmsProvider& provider)
{
    const std::filesystem::path& path = *provider.password_file;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw KeyUnavailable(path.string() + ": cannot read the password file of KMS provider \"" + provider.id + "\"");
    if ((st.st_mode & S_IROTH) != 0)
        throw KeyUnavailable(path.string() + ": every user can read this KMS password file; run: chmod o-rwx '" +
                             path.string() + "'");
    std::string text;
    try {
        text = read_small_file(path, 4096);
    } catch (const Error& e) {
        throw KeyUnavailable(std::string(e.what()) + " (the password file of KMS provider \"" + provider.id + "\")");
    }
    if (!text.empty() && text.back() == '\n')
        text.pop_back();
    SecureBytes password(text.begin(), text.end());
    Botan::secure_scrub_memory(text.data(), text.size());
    return password;
}

}  // namespace vmcrypt::kmip
