#include "core/kmip/tls_channel.hpp"

#include "core/kmip/ttlv.hpp"

#include <botan/credentials_manager.h>
#include <botan/data_src.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>
#include <botan/tls_client.h>
#include <botan/tls_exceptn.h>
#include <botan/tls_policy.h>
#include <botan/tls_session_manager.h>
#include <botan/x509path.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace vmcrypt::kmip {

namespace {

using Milliseconds = std::chrono::milliseconds;

std::string seconds_text(Milliseconds timeout)
{
    double seconds = static_cast<double>(timeout.count()) / 1000.0;
    char text[32];
    std::snprintf(text, sizeof text, "%g s", seconds);
    return text;
}

// TLS 1.2 only (Botan 2 has no TLS 1.3) with forward-secret key exchange only. AEAD suites come first.
// The CBC suites with SHA-256/384 stay allowed because PyKMIP 0.10, and servers like it, offer no AEAD
// suite for an RSA certificate.
class KmipTlsPolicy final : public Botan::TLS::Policy {
public:
    std::vector<std::string> allowed_ciphers() const override
    {
        return {"ChaCha20Poly1305", "AES-256/GCM", "AES-128/GCM", "AES-256", "AES-128"};
    }
    std::vector<std::string> allowed_macs() const override { return {"AEAD", "SHA-384", "SHA-256"}; }
    std::vector<std::string> allowed_key_exchange_methods() const override { return {"ECDH", "DH"}; }
    std::vector<std::string> allowed_signature_methods() const override { return {"ECDSA", "RSA"}; }
    bool require_cert_revocation_info() const override { return false; }
    bool allow_tls10() const override { return false; }
    bool allow_tls11() const override { return false; }
    bool allow_tls12() const override { return true; }
    bool allow_dtls10() const override { return false; }
    bool allow_dtls12() const override { return false; }
};

class IdentityCredentials final : public Botan::Credentials_Manager {
public:
    explicit IdentityCredentials(TlsIdentity& identity) : identity_(identity) {}

    std::vector<Botan::Certificate_Store*> trusted_certificate_authorities(const std::string& type,
                                                                           const std::string&) override
    {
        if (type != "tls-client")
            return {};
        return {&identity_.trusted_authorities()};
    }

    std::vector<Botan::X509_Certificate> find_cert_chain(const std::vector<std::string>& key_types,
                                                         const std::vector<Botan::X509_DN>&, const std::string& type,
                                                         const std::string&) override
    {
        if (type != "tls-client")
            return {};
        const std::string algorithm = identity_.private_key().algo_name();
        for (const std::string& key_type : key_types)
            if (key_type == algorithm)
                return identity_.certificate_chain();
        return {};
    }

    Botan::Private_Key* private_key_for(const Botan::X509_Certificate&, const std::string& type,
                                        const std::string&) override
    {
        return type == "tls-client" ? &identity_.private_key() : nullptr;
    }

private:
    TlsIdentity& identity_;
};

std::string iso_time(const Botan::X509_Time& time)
{
    std::time_t seconds = std::chrono::system_clock::to_time_t(time.to_std_timepoint());
    std::tm utc{};
    ::gmtime_r(&seconds, &utc);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
    return text;
}

ServerCertificate describe(const Botan::X509_Certificate& certificate)
{
    return {certificate.subject_dn().to_string(), certificate.issuer_dn().to_string(),
            certificate.fingerprint("SHA-256"), iso_time(certificate.not_after())};
}

// Every PEM certificate in a file, in order.
std::vector<Botan::X509_Certificate> read_certificates(const std::filesystem::path& path, const std::string& file_role)
{
    std::ifstream stream(path, std::ios::binary);
    if (!stream)
        throw std::invalid_argument(path.string() + ": cannot read the " + file_role + " (" + std::strerror(errno) + ")");
    std::string text((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
    const std::string begin = "-----BEGIN CERTIFICATE-----";
    const std::string end = "-----END CERTIFICATE-----";
    std::vector<Botan::X509_Certificate> certificates;
    for (std::size_t at = text.find(begin); at != std::string::npos; at = text.find(begin, at)) {
        std::size_t stop = text.find(end, at);
        if (stop == std::string::npos)
            throw std::invalid_argument(path.string() + ": the " + file_role + " has a PEM certificate without its END line");
        stop += end.size();
        try {
            Botan::DataSource_Memory source(text.substr(at, stop - at));
            certificates.emplace_back(source);
        } catch (const Botan::Exception& e) {
            throw std::invalid_argument(path.string() + ": the " + file_role + " has an invalid certificate: " + e.what());
        }
        at = stop;
    }
    if (certificates.empty())
        throw std::invalid_argument(path.string() + ": the " + file_role + " contains no PEM certificate (\"" + begin + "\")");
    return certificates;
}

std::unique_ptr<Botan::Private_Key> read_private_key(const std::filesystem::path& path)
{
    std::ifstream stream(path, std::ios::binary);
    if (!stream)
        throw std::invalid_argument(path.string() + ": cannot read the client private key (" + std::strerror(errno) + ")");
    SecureBytes content((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
    try {
        Botan::DataSource_Memory source(content);
        return Botan::PKCS8::load_key(source);
    } catch (const Botan::Exception& e) {
        throw std::invalid_argument(path.string() + ": the client private key cannot be loaded (" + e.what() +
                                    "); it must be an unencrypted PKCS#8 PEM key (\"BEGIN PRIVATE KEY\"), as "
                                    "`openssl pkcs8 -topk8 -nocrypt` writes");
    }
}

// --- socket ---------------------------------------------------------------------------------------

class Socket {
public:
    Socket() = default;
    ~Socket()
    {
        if (fd_ >= 0)
            ::close(fd_);
    }
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    // Connects to the first address of the endpoint that accepts within the time-out.
    void connect(const Endpoint& endpoint, Milliseconds timeout)
    {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* addresses = nullptr;
        std::string port = std::to_string(endpoint.port);
        if (int status = ::getaddrinfo(endpoint.host.c_str(), port.c_str(), &hints, &addresses); status != 0)
            throw TransportError("cannot resolve the host name: " + std::string(::gai_strerror(status)));
        std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(addresses, &::freeaddrinfo);

        std::string failure = "no address";
        for (addrinfo* address = addresses; address; address = address->ai_next) {
            int fd = ::socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                              address->ai_protocol);
            if (fd < 0) {
                failure = std::string("socket: ") + std::strerror(errno);
                continue;
            }
            if (::connect(fd, address->ai_addr, address->ai_addrlen) == 0 || finish_connect(fd, timeout, failure)) {
                fd_ = fd;
                return;
            }
            if (failure.empty())
                failure = std::string("connect: ") + std::strerror(errno);
            ::close(fd);
        }
        throw TransportError(failure);
    }

    // Sends all bytes; returns an error text, or empty on success (it runs inside Botan's callbacks, which
    // must not throw).
    std::string send_all(const std::uint8_t* data, std::size_t size, Milliseconds timeout)
    {
        while (size > 0) {
            if (!wait_for(POLLOUT, timeout))
                return "sending timed out after " + seconds_text(timeout);
            ssize_t sent = ::send(fd_, data, size, MSG_NOSIGNAL);
            if (sent < 0) {
                if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                    continue;
                return std::string("sending failed: ") + std::strerror(errno);
            }
            data += sent;
            size -= static_cast<std::size_t>(sent);
        }
        return {};
    }

    // Reads what is available, waiting at most `timeout`; returns 0 at end of stream.
    std::size_t receive(std::uint8_t* buffer, std::size_t capacity, Milliseconds timeout, const std::string& step)
    {
        for (;;) {
            if (!wait_for(POLLIN, timeout))
                throw TransportError("no reply within " + seconds_text(timeout) + " " + step);
            ssize_t got = ::recv(fd_, buffer, capacity, 0);
            if (got >= 0)
                return static_cast<std::size_t>(got);
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            throw TransportError("receiving failed " + step + ": " + std::strerror(errno));
        }
    }

private:
    static bool finish_connect(int fd, Milliseconds timeout, std::string& failure)
    {
        failure.clear();
        if (errno != EINPROGRESS)
            return false;
        pollfd descriptor{fd, POLLOUT, 0};
        int ready = ::poll(&descriptor, 1, static_cast<int>(timeout.count()));
        if (ready == 0) {
            failure = "connecting timed out after " + seconds_text(timeout);
            return false;
        }
        int error = 0;
        socklen_t length = sizeof error;
        if (ready < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0)
            error = errno;
        if (error != 0) {
            failure = std::string("connect: ") + std::strerror(error);
            return false;
        }
        return true;
    }

    bool wait_for(short events, Milliseconds timeout)
    {
        pollfd descriptor{fd_, events, 0};
        for (;;) {
            int ready = ::poll(&descriptor, 1, static_cast<int>(timeout.count()));
            if (ready >= 0)
                return ready > 0;
            if (errno != EINTR)
                return true;  // the following send or recv reports the error
        }
    }

    int fd_ = -1;
};

}  // namespace

// --- identity -------------------------------------------------------------------------------------

TlsIdentity::TlsIdentity(const std::filesystem::path& ca_file, const std::filesystem::path& certificate_file,
                         const std::filesystem::path& private_key_file)
{
    for (const Botan::X509_Certificate& authority : read_certificates(ca_file, "CA certificate file"))
        trusted_.add_certificate(authority);
    chain_ = read_certificates(certificate_file, "client certificate");
    key_ = read_private_key(private_key_file);
    if (chain_.front().load_subject_public_key()->public_key_bits() != key_->public_key_bits())
        throw std::invalid_argument(private_key_file.string() + ": this private key does not belong to the client "
                                    "certificate " + certificate_file.string());
}

TlsIdentity::~TlsIdentity() = default;

// --- channel --------------------------------------------------------------------------------------

struct TlsChannel::State final : Botan::TLS::Callbacks {
    State(TlsIdentity& identity, Milliseconds read_timeout) : credentials(identity), timeout(read_timeout) {}

    void tls_emit_data(const std::uint8_t data[], std::size_t size) override
    {
        if (write_error.empty())
            write_error = socket.send_all(data, size, timeout);
    }

    void tls_record_received(std::uint64_t, const std::uint8_t data[], std::size_t size) override
    {
        received.insert(received.end(), data, data + size);
    }

    void tls_alert(Botan::TLS::Alert alert) override
    {
        if (alert.type() == Botan::TLS::Alert::CLOSE_NOTIFY)
            peer_closed = true;
        else
            last_alert = alert.type_string();
    }

    bool tls_session_established(const Botan::TLS::Session& session) override
    {
        suite = session.ciphersuite().to_string();
        return false;  // nothing is cached: each connection does a full handshake
    }

    void tls_verify_cert_chain(const std::vector<Botan::X509_Certificate>& chain,
                               const std::vector<std::shared_ptr<const Botan::OCSP::Response>>& ocsp,
                               const std::vector<Botan::Certificate_Store*>& roots, Botan::Usage_Type usage,
                               const std::string& hostname, const Botan::TLS::Policy& tls_policy) override
    {
        if (chain.empty())
            throw Botan::TLS::TLS_Exception(Botan::TLS::Alert::BAD_CERTIFICATE, "the server sent no certificate");
        certificate = describe(chain.front());
        Botan::Path_Validation_Restrictions restrictions(false, tls_policy.minimum_signature_strength());
        Botan::Path_Validation_Result result = Botan::x509_path_validate(
            chain, restrictions, roots, hostname, usage, std::chrono::system_clock::now(), Milliseconds(0), ocsp);
        if (!result.successful_validation())
            throw Botan::TLS::TLS_Exception(Botan::TLS::Alert::BAD_CERTIFICATE,
                                            "the server certificate (" + certificate->subject + ", SHA-256 " +
                                                certificate->sha256_fingerprint +
                                                ") is not trusted: " + result.result_string());
    }

    // Feeds received bytes to Botan; converts its exceptions and alerts into TransportError.
    void receive_some(const std::string& step)
    {
        std::uint8_t buffer[16384];
        std::size_t got = socket.receive(buffer, sizeof buffer, timeout, step);
        if (got == 0) {
            std::string text = "the server closed the connection " + step;
            if (!last_alert.empty())
                text += " (TLS alert: " + last_alert + ")";
            throw TransportError(text, certificate);
        }
        try {
            client->received_data(buffer, got);
        } catch (const Botan::Exception& e) {
            Botan::secure_scrub_memory(buffer, sizeof buffer);
            throw TransportError((client->is_active() ? "TLS error " + step : std::string("TLS handshake failed")) +
                                     ": " + e.what(),
                                 certificate);
        }
        Botan::secure_scrub_memory(buffer, got);
        check_open(step);
    }

    void check_open(const std::string& step)
    {
        if (!write_error.empty())
            throw TransportError(write_error + " " + step, certificate);
        if (!last_alert.empty())
            throw TransportError("the server sent the TLS alert \"" + last_alert + "\" " + step, certificate);
    }

    Socket socket;
    IdentityCredentials credentials;
    KmipTlsPolicy policy;
    Botan::System_RNG rng;
    Botan::TLS::Session_Manager_Noop sessions;
    std::unique_ptr<Botan::TLS::Client> client;
    Milliseconds timeout;

    SecureBytes received;
    std::optional<ServerCertificate> certificate;
    std::string suite;
    std::string write_error;
    std::string last_alert;
    bool peer_closed = false;
};

TlsChannel::TlsChannel(const Endpoint& endpoint, const std::string& server_name, TlsIdentity& identity,
                       Milliseconds timeout)
    : state_(std::make_unique<State>(identity, timeout))
{
    state_->socket.connect(endpoint, timeout);
    const std::string name = server_name.empty() ? endpoint.host : server_name;
    try {
        state_->client = std::make_unique<Botan::TLS::Client>(
            *state_, state_->sessions, state_->credentials, state_->policy, state_->rng,
            Botan::TLS::Server_Information(name, endpoint.port), Botan::TLS::Protocol_Version::TLS_V12);
    } catch (const Botan::Exception& e) {
        throw TransportError(std::string("TLS setup failed: ") + e.what());
    }
    state_->check_open("during the TLS handshake");
    while (!state_->client->is_active()) {
        if (state_->client->is_closed())
            throw TransportError("the TLS handshake ended without a connection", state_->certificate);
        state_->receive_some("during the TLS handshake");
    }
}

TlsChannel::~TlsChannel()
{
    if (state_ && state_->client && state_->client->is_active() && state_->write_error.empty()) {
        try {
            state_->client->close();
        } catch (...) {
            // Closing is a courtesy to the server; the socket is closed either way.
        }
    }
}

SecureBytes TlsChannel::exchange(std::span<const std::uint8_t> request)
{
    State& state = *state_;
    state.received.clear();
    try {
        state.client->send(request.data(), request.size());
    } catch (const Botan::Exception& e) {
        throw TransportError(std::string("sending the request failed: ") + e.what(), state.certificate);
    }
    state.check_open("while sending the request");

    std::size_t expected = 0;
    for (;;) {
        if (expected == 0 && state.received.size() >= 8)
            expected = message_size_from_header(std::span<const std::uint8_t, 8>(state.received.data(), 8));
        if (expected != 0 && state.received.size() >= expected)
            break;
        std::string progress = "in the middle of the reply (after " + std::to_string(state.received.size()) +
                               (expected ? " of " + std::to_string(expected) : std::string()) + " bytes)";
        if (state.peer_closed || state.client->is_closed())
            throw TransportError("the server closed the connection " +
                                     (state.received.empty() ? std::string("without a reply") : progress),
                                 state.certificate);
        state.receive_some(state.received.empty() ? "waiting for the reply" : progress);
    }
    if (state.received.size() > expected)
        throw TtlvError("the server sent " + std::to_string(state.received.size() - expected) +
                        " bytes after its reply to a single request");
    SecureBytes reply;
    reply.swap(state.received);
    return reply;
}

const std::optional<ServerCertificate>& TlsChannel::server_certificate() const
{
    return state_->certificate;
}

std::string TlsChannel::cipher_suite() const
{
    return state_->suite;
}

}  // namespace vmcrypt::kmip
