#pragma once
// KMIP 1.1 Request and Response Messages: a header, then one or more batch items, each carrying one
// operation and its payload (KMIP 1.1 specification, section 7). Payload contents are built and read by
// the operations in client.hpp; this layer checks the message frame around them.

#include "core/kmip/tags.hpp"
#include "core/kmip/ttlv.hpp"

#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vmcrypt::kmip {

struct ProtocolVersion {
    std::int32_t major = 1;
    std::int32_t minor = 1;

    bool operator==(const ProtocolVersion&) const = default;
    std::string to_string() const { return std::to_string(major) + "." + std::to_string(minor); }
};

Item encode_protocol_version(const ProtocolVersion& version);
ProtocolVersion decode_protocol_version(const Item& item);

// Credential Type 1 (Username and Password), sent in the Request Header's Authentication.
struct UsernamePassword {
    std::string username;
    SecureBytes password;  // UTF-8; empty to send the username alone
};

struct RequestBatchItem {
    Operation operation = Operation::discover_versions;
    Item payload = Item::structure(tag::request_payload);
    std::vector<std::uint8_t> batch_id;  // Unique Batch Item ID; empty to leave it out
};

struct Request {
    ProtocolVersion version;
    const UsernamePassword* credential = nullptr;
    std::vector<RequestBatchItem> items;
};

// Encodes a Request Message with Batch Count = items.size() and no Time Stamp (a server may reject a
// stamp from a client whose clock is off).
SecureBytes encode_request(const Request& request);

struct ResponseBatchItem {
    std::optional<std::uint32_t> operation;  // a raw value, since a server may name an operation vmcrypt lacks
    std::vector<std::uint8_t> batch_id;
    ResultStatus status = ResultStatus::success;
    std::optional<std::uint32_t> reason;  // Result Reason, present when status is not success
    std::string message;                  // Result Message, may be empty
    std::optional<Item> payload;          // Response Payload
};

struct Response {
    ProtocolVersion version;
    std::int64_t time_stamp = 0;
    std::vector<ResponseBatchItem> items;
};

// Decodes and checks a Response Message: the tags and types of the header and of each batch item, the
// Batch Count against the items present, a Result Reason for every failed item. Throws TtlvError.
Response decode_response(std::span<const std::uint8_t> message);

}  // namespace vmcrypt::kmip
