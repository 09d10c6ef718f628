#pragma once
// Failover across the servers of one KMS provider. Each operation goes to the server of the current
// connection. When that server cannot be reached, times out, breaks the connection or sends a malformed
// reply, the operation is retried on the next server in the configured order, each server at most once
// per operation. A server's KMIP failure reply (Permission Denied, Item Not Found, ...) is final, because
// the servers of one provider serve the same keys.
//
// Errors: KeyUnavailable naming every server and what went wrong with it when none could do the
// operation, or naming the server and the KMIP reason when a server refused it.

#include "core/kmip/client.hpp"
#include "core/kmip/kms_config.hpp"
#include "core/kmip/tls_channel.hpp"

#include <functional>
#include <memory>

namespace vmcrypt::kmip {

class ProviderSession {
public:
    // Loads the provider's certificates, key and password; throws KeyUnavailable naming the file.
    explicit ProviderSession(const KmsProvider& provider);
    ~ProviderSession();

    // Runs `operation` ("Get of key \"7\"" in `description`) with failover, as described above.
    // NOTE: an operation is retried on the next server after a broken connection even if the first server
    // had carried it out (a Create whose reply was lost leaves an unused key on the KMS).
    void run(const std::string& description, const std::function<void(Client&)>& operation);

    const KmsProvider& provider() const { return provider_; }
    // "127.0.0.1:5696", the server of the last successful operation.
    std::string current_server() const;

private:
    const KmsProvider& provider_;
    std::unique_ptr<TlsIdentity> identity_;
    std::optional<UsernamePassword> credential_;
    std::size_t current_ = 0;
    std::unique_ptr<TlsChannel> channel_;
};

// What to do about a KMIP Result Reason, or "" when there is no general advice.
std::string operation_failure_advice(std::uint32_t reason);

// A KMIP failure reply as one sentence with advice for the common reasons.
std::string explain_operation_failure(const OperationFailed& failure);

}  // namespace vmcrypt::kmip
