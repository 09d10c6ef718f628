// kms check: connects to every server of the configured KMS providers and reports what an administrator
// must confirm before relying on them. That is the server certificate (subject, SHA-256 fingerprint),
// the TLS cipher suite, the KMIP versions, and whether a test key can be created, activated, fetched,
// found by name, revoked and destroyed.

#include "core/error.hpp"
#include "core/kmip/kms_config.hpp"
#include "core/kmip/provider_session.hpp"
#include "core/kmip/tls_channel.hpp"
#include "core/log.hpp"
#include "tools/commands.hpp"

#include <botan/system_rng.h>
#include <botan/uuid.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>

namespace vmcrypt::cli {

namespace {

using nlohmann::json;

json certificate_json(const kmip::ServerCertificate& certificate)
{
    return {{"subject", certificate.subject},
            {"issuer", certificate.issuer},
            {"sha256Fingerprint", certificate.sha256_fingerprint},
            {"notAfter", certificate.not_after}};
}

std::string test_key_name()
{
    Botan::System_RNG rng;
    std::string uuid = Botan::UUID(rng).to_string();
    for (char& c : uuid)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return "vmcrypt-check-" + uuid;
}

// Runs one step of the key test and records it in `steps`; returns false when it failed.
bool run_step(json& steps, const std::string& name, const std::function<void()>& step)
{
    try {
        step();
        steps.push_back({{"step", name}, {"ok", true}});
        return true;
    } catch (const kmip::OperationFailed& e) {
        steps.push_back({{"step", name}, {"ok", false}, {"error", kmip::explain_operation_failure(e)}});
    } catch (const std::exception& e) {
        steps.push_back({{"step", name}, {"ok", false}, {"error", e.what()}});
    }
    return false;
}

// Creates a test key and runs every operation vmcrypt needs on it, then removes it again.
json check_key_operations(kmip::Client& client)
{
    json steps = json::array();
    const std::string name = test_key_name();
    std::string uid;
    if (!run_step(steps, "create", [&] { uid = client.create_aes256_key(name, kmip::kek_usage_mask); }))
        return steps;

    bool active = run_step(steps, "activate", [&] { client.activate(uid); });
    run_step(steps, "get", [&] { client.get_aes256_key(uid); });
    run_step(steps, "get-attributes", [&] {
        std::uint32_t state = client.get_state(uid);
        if (active && state != static_cast<std::uint32_t>(kmip::KeyState::active))
            throw std::runtime_error("the activated test key is " + kmip::key_state_name(state) + ", not Active");
    });
    run_step(steps, "locate", [&] {
        std::vector<std::string> found = client.locate_by_name(name);
        if (std::find(found.begin(), found.end(), uid) == found.end())
            throw std::runtime_error("Locate by the name " + name + " did not return the test key \"" + uid + "\"");
    });
    if (active)
        run_step(steps, "revoke", [&] {
            client.revoke(uid, kmip::RevocationReason::cessation_of_operation, "vmcrypt kms check");
        });
    bool destroyed = run_step(steps, "destroy", [&] { client.destroy(uid); });
    if (!destroyed)
        log_warning("kms check: the test key \"" + uid + "\" (" + name + ") could not be destroyed; remove it on the KMS");
    steps.back()["key"] = uid;
    return steps;
}

json check_server(const kmip::KmsProvider& provider, const kmip::KmsServer& server, kmip::TlsIdentity& identity,
                  const kmip::UsernamePassword* credential)
{
    json report = {{"host", server.host}, {"port", server.port}, {"ok", false}};
    std::unique_ptr<kmip::TlsChannel> channel;
    try {
        channel = std::make_unique<kmip::TlsChannel>(kmip::Endpoint{server.host, server.port}, server.server_name,
                                                     identity, provider.timeout);
    } catch (const kmip::TransportError& e) {
        if (e.server_certificate())
            report["certificate"] = certificate_json(*e.server_certificate());
        report["error"] = e.what();
        return report;
    }
    if (channel->server_certificate())
        report["certificate"] = certificate_json(*channel->server_certificate());
    report["tlsCipherSuite"] = channel->cipher_suite();

    // vmcrypt needs neither Discover Versions nor Query to use keys, so a server that refuses them gets a
    // warning and the key test still runs. A broken connection ends the check of this server.
    // NOTE: PyKMIP, the only test server, accepts both, so no test reaches the warning branches.
    kmip::Client client(*channel, credential);
    json warnings = json::array();
    try {
        try {
            json versions = json::array();
            for (const kmip::ProtocolVersion& version : client.discover_versions())
                versions.push_back(version.to_string());
            report["kmipVersions"] = versions;
        } catch (const kmip::OperationFailed& e) {
            warnings.push_back(kmip::explain_operation_failure(e));
        }
        try {
            kmip::QueryResult query =
                client.query({kmip::QueryFunction::operations, kmip::QueryFunction::server_information});
            report["vendor"] = query.vendor;
        } catch (const kmip::OperationFailed& e) {
            warnings.push_back(kmip::explain_operation_failure(e));
        }
    } catch (const std::exception& e) {
        report["error"] = e.what();
        return report;
    }
    if (!warnings.empty())
        report["warnings"] = warnings;

    json steps = check_key_operations(client);
    report["keyTest"] = steps;
    bool all_ok = true;
    for (const json& step : steps)
        if (!step["ok"].get<bool>()) {
            all_ok = false;
            if (!report.contains("error"))
                report["error"] = "key test step " + step["step"].get<std::string>() + " failed: " +
                                  step["error"].get<std::string>();
        }
    report["ok"] = all_ok;
    return report;
}

json check_provider(const kmip::KmsProvider& provider)
{
    json report = {{"id", provider.id}, {"servers", json::array()}};
    std::unique_ptr<kmip::TlsIdentity> identity;
    std::optional<kmip::UsernamePassword> credential;
    try {
        // ProviderSession checks and loads the certificates, the key and the password the same way encrypt does.
        kmip::ProviderSession session(provider);
        identity = std::make_unique<kmip::TlsIdentity>(provider.ca_file, provider.client_certificate_file,
                                                       provider.client_key_file);
        if (provider.username) {
            credential.emplace();
            credential->username = *provider.username;
            if (provider.password_file)
                credential->password = kmip::read_kms_password(provider);
        }
    } catch (const std::exception& e) {
        report["error"] = e.what();
        return report;
    }
    for (const kmip::KmsServer& server : provider.servers) {
        log_info("kms check: provider \"" + provider.id + "\", server " + server.address());
        report["servers"].push_back(check_server(provider, server, *identity, credential ? &*credential : nullptr));
    }
    return report;
}

void print_text(const json& result)
{
    std::printf("KMS configuration: %s\n", result["config"].get<std::string>().c_str());
    for (const json& provider : result["providers"]) {
        std::printf("provider %s\n", provider["id"].get<std::string>().c_str());
        if (provider.contains("error")) {
            std::printf("  FAILED: %s\n", provider["error"].get<std::string>().c_str());
            continue;
        }
        for (const json& server : provider["servers"]) {
            std::printf("  server %s:%d: %s\n", server["host"].get<std::string>().c_str(), server["port"].get<int>(),
                        server["ok"].get<bool>() ? "ok" : "FAILED");
            if (server.contains("certificate")) {
                const json& certificate = server["certificate"];
                std::printf("    certificate: %s\n", certificate["subject"].get<std::string>().c_str());
                std::printf("      issuer:    %s\n", certificate["issuer"].get<std::string>().c_str());
                std::printf("      SHA-256:   %s\n", certificate["sha256Fingerprint"].get<std::string>().c_str());
                std::printf("      expires:   %s\n", certificate["notAfter"].get<std::string>().c_str());
            }
            if (server.contains("tlsCipherSuite"))
                std::printf("    TLS:         %s\n", server["tlsCipherSuite"].get<std::string>().c_str());
            if (server.contains("kmipVersions")) {
                std::string versions;
                for (const json& version : server["kmipVersions"])
                    versions += (versions.empty() ? "" : ", ") + version.get<std::string>();
                std::printf("    KMIP:        %s\n", versions.c_str());
            }
            if (server.contains("vendor") && !server["vendor"].get<std::string>().empty())
                std::printf("    vendor:      %s\n", server["vendor"].get<std::string>().c_str());
            if (server.contains("keyTest")) {
                std::string steps;
                for (const json& step : server["keyTest"])
                    steps += (steps.empty() ? "" : ", ") + step["step"].get<std::string>() +
                             (step["ok"].get<bool>() ? " ok" : " FAILED");
                std::printf("    test key:    %s\n", steps.c_str());
            }
            if (server.contains("warnings"))
                for (const json& warning : server["warnings"])
                    std::printf("    warning:     %s\n", warning.get<std::string>().c_str());
            if (server.contains("error"))
                std::printf("    error:       %s\n", server["error"].get<std::string>().c_str());
        }
    }
}

}  // namespace

int run_kms_check(const GlobalOptions& global, const KmsCheckOptions& options)
{
    const std::filesystem::path config_file =
        options.kms_config ? std::filesystem::path(*options.kms_config) : kmip::default_kms_config_path();
    kmip::KmsConfig config = kmip::KmsConfig::load(config_file);

    std::vector<const kmip::KmsProvider*> providers;
    if (options.provider)
        providers.push_back(&config.provider(*options.provider));
    else
        for (const kmip::KmsProvider& provider : config.providers)
            providers.push_back(&provider);

    json result = {{"schema", "vmcrypt-kms-check/1"}, {"config", config_file.string()}, {"providers", json::array()}};
    bool all_ok = true;
    for (const kmip::KmsProvider* provider : providers) {
        json report = check_provider(*provider);
        if (report.contains("error"))
            all_ok = false;
        for (const json& server : report["servers"])
            all_ok = all_ok && server["ok"].get<bool>();
        result["providers"].push_back(report);
    }
    result["ok"] = all_ok;

    if (global.json)
        std::printf("%s\n", result.dump(2, ' ', false, json::error_handler_t::replace).c_str());
    else if (!global.quiet)
        print_text(result);
    if (!all_ok)
        std::fprintf(stderr, "vmcrypt: kms check: at least one KMS server failed a check; see the report above\n");
    return all_ok ? 0 : static_cast<int>(ExitCode::key_error);
}

}  // namespace vmcrypt::cli
