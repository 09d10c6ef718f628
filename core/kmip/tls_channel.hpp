#pragma once
// KMIP over TLS 1.2 with mutual authentication (Botan 2): the client presents its certificate, the server's
// certificate must chain to the configured CA and name the host that was dialled. Connecting and every
// read are bounded by a time-out.
//
// NOTE: certificate revocation is not checked (no CRL or OCSP). A KMS usually has a private CA that
// publishes neither, and Botan's default of requiring revocation data rejects such servers outright.

#include "core/kmip/client.hpp"

#include <botan/pk_keys.h>
#include <botan/certstor.h>
#include <botan/x509cert.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>

namespace vmcrypt::kmip {

// The server's certificate, recorded before the certificate check so that an untrusted certificate can
// still be shown to an administrator.
struct ServerCertificate {
    std::string subject;
    std::string issuer;
    std::string sha256_fingerprint;  // "AB:CD:..." over the DER encoding
    std::string not_after;           // "2028-03-02T11:00:00Z"
};

// The connection to one server failed: resolve, connect, time-out, TLS handshake or certificate check,
// a closed connection. The message names the failed step and the cause but not the host, which callers add.
class TransportError : public std::runtime_error {
public:
    explicit TransportError(const std::string& message, std::optional<ServerCertificate> certificate = std::nullopt)
        : std::runtime_error(message), certificate_(std::move(certificate))
    {
    }
    // The certificate the server presented before the failure, if it got that far.
    const std::optional<ServerCertificate>& server_certificate() const { return certificate_; }

private:
    std::optional<ServerCertificate> certificate_;
};

// The client's identity and the CA it trusts, loaded once and used for every server of a provider.
// Constructing it reads the files; errors name the file and throw std::invalid_argument.
class TlsIdentity {
public:
    TlsIdentity(const std::filesystem::path& ca_file, const std::filesystem::path& certificate_file,
                const std::filesystem::path& private_key_file);
    ~TlsIdentity();

    Botan::Certificate_Store& trusted_authorities() { return trusted_; }
    const std::vector<Botan::X509_Certificate>& certificate_chain() const { return chain_; }
    Botan::Private_Key& private_key() { return *key_; }

private:
    Botan::Certificate_Store_In_Memory trusted_;
    std::vector<Botan::X509_Certificate> chain_;
    std::unique_ptr<Botan::Private_Key> key_;
};

struct Endpoint {
    std::string host;
    std::uint16_t port = 5696;
};

class TlsChannel final : public MessageChannel {
public:
    // Connects and completes the handshake. `server_name` is the name the certificate must carry (the
    // host when empty). Throws TransportError.
    TlsChannel(const Endpoint& endpoint, const std::string& server_name, TlsIdentity& identity,
               std::chrono::milliseconds timeout);
    ~TlsChannel() override;
    TlsChannel(const TlsChannel&) = delete;
    TlsChannel& operator=(const TlsChannel&) = delete;

    SecureBytes exchange(std::span<const std::uint8_t> request) override;

    const std::optional<ServerCertificate>& server_certificate() const;
    std::string cipher_suite() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace vmcrypt::kmip
