#pragma once
// The KMS configuration: a JSON file naming one or more key providers. A provider is one logical KMS
// (often a cluster whose servers share their keys); its servers are tried in the listed order.
//
//   {
//     "providers": [{
//       "id": "corp-kms",
//       "servers": [{"host": "kms1.example.com", "port": 5696}, {"host": "kms2.example.com"}],
//       "ca": "ca.pem", "clientCertificate": "client.pem", "clientKey": "client.key",
//       "username": "vmcrypt", "passwordFile": "kms.password", "timeoutSeconds": 10
//     }]
//   }
//
// Relative paths are resolved against the folder of the configuration file. The password is only ever
// read from its file, never from the command line.

#include "core/crypto/secure.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::kmip {

struct KmsServer {
    std::string host;
    std::uint16_t port = 5696;
    std::string server_name;  // the name the certificate must carry; the host when empty

    std::string address() const;  // "host:port", "[v6]:port"
};

struct KmsProvider {
    std::string id;
    std::vector<KmsServer> servers;
    std::filesystem::path ca_file;
    std::filesystem::path client_certificate_file;
    std::filesystem::path client_key_file;
    std::optional<std::string> username;
    std::optional<std::filesystem::path> password_file;
    std::chrono::milliseconds timeout{10000};
};

struct KmsConfig {
    std::filesystem::path file;
    std::vector<KmsProvider> providers;

    // Reads and validates the file. Throws KeyUnavailable when it cannot be read and InvalidInput naming
    // the field when its content is wrong.
    static KmsConfig load(const std::filesystem::path& file);

    // The provider with this id, or KeyUnavailable listing the ids the file has.
    const KmsProvider& provider(const std::string& id) const;
};

// $VMCRYPT_KMS_CONFIG, else $XDG_CONFIG_HOME/vmcrypt/kms.json, else $HOME/.config/vmcrypt/kms.json.
std::filesystem::path default_kms_config_path();

// Provider ids go into key slots, so they are limited to letters, digits, '.', '_' and '-'.
bool is_valid_provider_id(const std::string& id);

// The password of a provider's credential, from its passwordFile (one trailing newline dropped). Throws
// KeyUnavailable when the file is unreadable or readable by every user.
SecureBytes read_kms_password(const KmsProvider& provider);

}  // namespace vmcrypt::kmip
