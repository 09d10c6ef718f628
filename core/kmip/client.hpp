#pragma once
// The KMIP 1.1 operations a key client needs, each as one request with one batch item over a
// MessageChannel. Requests carry Protocol Version 1.1, no Time Stamp and, when configured, a Username and
// Password credential.
//
// Errors: OperationFailed when the response has a failed Result Status, with its reason and message.
// TtlvError when the response is malformed or does not match the request. The channel's own exception
// (TransportError for TLS) when the connection breaks.

#include "core/kmip/messages.hpp"

#include <stdexcept>

namespace vmcrypt::kmip {

// One request/response exchange. The channel frames messages; the client checks their contents.
class MessageChannel {
public:
    virtual ~MessageChannel() = default;
    // Sends one whole Request Message and returns the whole Response Message to it.
    virtual SecureBytes exchange(std::span<const std::uint8_t> request) = 0;
};

// The server processed the request and reported a failure.
class OperationFailed : public std::runtime_error {
public:
    OperationFailed(Operation operation, std::uint32_t reason, const std::string& server_message);
    Operation operation() const noexcept { return operation_; }
    std::uint32_t reason() const noexcept { return reason_; }
    // "Permission Denied (server: \"Could not locate object: 1\")": the reason and the server's Result Message.
    const std::string& result() const noexcept { return result_; }

private:
    Operation operation_;
    std::uint32_t reason_;
    std::string result_;
};

struct QueryResult {
    std::vector<std::uint32_t> operations;
    std::vector<std::uint32_t> object_types;
    std::string vendor;  // Vendor Identification, may be empty
};

// Usage of a KEK that wraps DEKs: Wrap Key and Unwrap Key, plus Encrypt and Decrypt, which some servers
// require of any AES key that is used for cryptography.
inline constexpr std::int32_t kek_usage_mask = usage::encrypt | usage::decrypt | usage::wrap_key | usage::unwrap_key;

class Client {
public:
    explicit Client(MessageChannel& channel, const UsernamePassword* credential = nullptr);

    // The versions the server supports from `offered`, in the server's order of preference; all its
    // versions when `offered` is empty.
    std::vector<ProtocolVersion> discover_versions(const std::vector<ProtocolVersion>& offered = {});
    QueryResult query(const std::vector<QueryFunction>& functions);

    // Creates an AES-256 symmetric key with this Cryptographic Usage Mask and Name; returns its Unique
    // Identifier. A new key is Pre-Active on most servers.
    std::string create_aes256_key(const std::string& name, std::int32_t usage_mask);
    void activate(const std::string& uid);
    // The 32 bytes of an AES-256 key, from a Raw or Transparent Symmetric Key block that is not wrapped.
    SecureBytes get_aes256_key(const std::string& uid);
    // The key's State attribute (KeyState values; unknown values are passed through).
    std::uint32_t get_state(const std::string& uid);
    std::vector<std::string> locate_by_name(const std::string& name);
    void revoke(const std::string& uid, RevocationReason reason, const std::string& message = {});
    void destroy(const std::string& uid);

private:
    // Sends one operation; returns its Response Payload (an empty structure when the server sent none).
    Item run(Operation operation, Item payload);

    MessageChannel& channel_;
    const UsernamePassword* credential_;
};

// Builds the Request Payload of each operation; public so that tests can compare them with captured bytes.
namespace payload {
Item create_aes256_key(const std::string& name, std::int32_t usage_mask);
Item unique_identifier_only(const std::string& uid);
Item get_attributes(const std::string& uid, const std::vector<std::string>& names);
Item locate_by_name(const std::string& name);
Item revoke(const std::string& uid, RevocationReason reason, const std::string& message);
Item discover_versions(const std::vector<ProtocolVersion>& offered);
Item query(const std::vector<QueryFunction>& functions);
}  // namespace payload

}  // namespace vmcrypt::kmip
