#include "core/kmip/provider_session.hpp"

#include "core/error.hpp"
#include "core/log.hpp"

#include <sys/stat.h>

namespace vmcrypt::kmip {

namespace {

void require_not_world_readable(const std::filesystem::path& path, const std::string& file_role)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & S_IROTH) != 0)
        throw KeyUnavailable(path.string() + ": every user can read this " + file_role + "; run: chmod o-rwx '" +
                             path.string() + "'");
}

}  // namespace

std::string operation_failure_advice(std::uint32_t reason)
{
    switch (static_cast<ResultReason>(reason)) {
    case ResultReason::permission_denied:
        return "the client certificate's identity may not use this key (KMS servers such as PyKMIP give a key to "
               "the identity that created it only), so use the client certificate that created it or ask the KMS "
               "administrator for access";
    case ResultReason::item_not_found:
        return "the key does not exist on this KMS (destroyed, or created on another KMS)";
    case ResultReason::authentication_not_successful:
        return "check the client certificate, and the username and passwordFile of the provider";
    default:
        return {};
    }
}

std::string explain_operation_failure(const OperationFailed& failure)
{
    std::string advice = operation_failure_advice(failure.reason());
    return std::string(failure.what()) + (advice.empty() ? "" : "; " + advice);
}

ProviderSession::ProviderSession(const KmsProvider& provider) : provider_(provider)
{
    require_not_world_readable(provider.client_key_file, "client private key");
    try {
        identity_ = std::make_unique<TlsIdentity>(provider.ca_file, provider.client_certificate_file,
                                                  provider.client_key_file);
    } catch (const std::invalid_argument& e) {
        throw KeyUnavailable(std::string(e.what()) + " (KMS provider \"" + provider.id + "\")");
    }
    if (provider.username) {
        credential_.emplace();
        credential_->username = *provider.username;
        if (provider.password_file)
            credential_->password = read_kms_password(provider);
    }
}

ProviderSession::~ProviderSession() = default;

std::string ProviderSession::current_server() const
{
    return provider_.servers[current_].address();
}

void ProviderSession::run(const std::string& description, const std::function<void(Client&)>& operation)
{
    std::vector<std::string> failures;
    const std::size_t count = provider_.servers.size();
    for (std::size_t attempt = 0; attempt < count; ++attempt) {
        const KmsServer& server = provider_.servers[current_];
        try {
            if (!channel_) {
                log_debug("KMS provider \"" + provider_.id + "\": connecting to " + server.address());
                channel_ = std::make_unique<TlsChannel>(Endpoint{server.host, server.port}, server.server_name,
                                                        *identity_, provider_.timeout);
                log_debug("KMS " + server.address() + ": connected with " + channel_->cipher_suite());
            }
            Client client(*channel_, credential_ ? &*credential_ : nullptr);
            operation(client);
            // Failed servers are reported once the operation succeeded elsewhere, so that a total failure
            // stays one error line that lists them all.
            for (const std::string& failure : failures)
                log_warning("KMS provider \"" + provider_.id + "\": " + failure + "; used " + server.address() +
                            " instead");
            return;
        } catch (const OperationFailed& e) {
            std::string advice = operation_failure_advice(e.reason());
            throw KeyUnavailable("KMS provider \"" + provider_.id + "\", server " + server.address() + ": " +
                                 description + " failed: " + e.result() + (advice.empty() ? "" : "; " + advice));
        } catch (const TransportError& e) {
            failures.push_back(server.address() + ": " + e.what());
        } catch (const TtlvError& e) {
            failures.push_back(server.address() + ": invalid KMIP reply: " + e.what());
        }
        channel_.reset();
        log_debug("KMS provider \"" + provider_.id + "\": " + failures.back());
        current_ = (current_ + 1) % count;
    }

    std::string list;
    for (const std::string& failure : failures)
        list += (list.empty() ? "" : "; ") + failure;
    throw KeyUnavailable("KMS provider \"" + provider_.id + "\": " + description + " failed on every server (" +
                         list + "); check that the KMS is running and reachable, and the provider's servers "
                         "and CA in the KMS configuration");
}

}  // namespace vmcrypt::kmip
