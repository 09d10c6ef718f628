#include "core/kmip/client.hpp"

namespace vmcrypt::kmip {

namespace {

constexpr std::size_t aes256_key_bytes = 32;

// Transparent Symmetric Key's Key (KMIP 1.1, section 2.1.7.1), inside Key Material.
constexpr std::uint32_t tag_transparent_key = 0x42003F;
constexpr std::uint32_t key_format_transparent_symmetric = 7;

std::string describe_result(std::uint32_t reason, const std::string& server_message)
{
    std::string text = result_reason_name(reason);
    if (!server_message.empty())
        text += " (server: \"" + server_message + "\")";
    return text;
}

Item attribute(const std::string& name, Item value)
{
    value.tag = tag::attribute_value;
    return Item::structure(tag::attribute, {Item::text_string(tag::attribute_name, name), std::move(value)});
}

Item name_attribute_value(const std::string& name)
{
    return Item::structure(tag::attribute_value, {Item::text_string(tag::name_value, name),
                                                  Item::enumeration(tag::name_type, name_type_uninterpreted_text)});
}

const std::string& expect_uid(const Item& payload, const std::string& uid, Operation operation)
{
    const std::string& returned = payload.require(tag::unique_identifier).as_text();
    if (returned != uid)
        throw TtlvError("the " + to_string(operation) + " reply names key \"" + returned + "\", expected \"" + uid + "\"");
    return returned;
}

// The key bytes of a Symmetric Key object, checked to be an unwrapped 256-bit AES key.
SecureBytes aes256_key_from(const Item& symmetric_key)
{
    const Item& block = symmetric_key.require(tag::key_block);
    if (block.find(tag::key_wrapping_data))
        throw TtlvError("the server returned the key wrapped (Key Wrapping Data present); vmcrypt requests it "
                        "unwrapped");
    if (const Item* compression = block.find(tag::key_compression_type))
        throw TtlvError("the server returned the key with Key Compression Type " +
                        std::to_string(compression->as_enumeration()) + "; a symmetric key is not compressed");
    if (const Item* algorithm = block.find(tag::cryptographic_algorithm); algorithm &&
                                                                          algorithm->as_enumeration() != algorithm_aes)
        throw TtlvError("the key's Cryptographic Algorithm is " + std::to_string(algorithm->as_enumeration()) +
                        ", expected AES (3)");
    if (const Item* length = block.find(tag::cryptographic_length); length && length->as_integer() != 256)
        throw TtlvError("the key's Cryptographic Length is " + std::to_string(length->as_integer()) +
                        " bits, expected 256");

    std::uint32_t format = block.require(tag::key_format_type).as_enumeration();
    const Item& material = block.require(tag::key_value).require(tag::key_material);
    const SecureBytes* key = nullptr;
    if (format == key_format_raw)
        key = &material.as_bytes();
    else if (format == key_format_transparent_symmetric)
        key = &material.require(tag_transparent_key).as_bytes();
    else
        throw TtlvError("the key has Key Format Type " + std::to_string(format) +
                        "; vmcrypt reads Raw (1) and Transparent Symmetric Key (7)");
    if (key->size() != aes256_key_bytes)
        throw TtlvError("the key material is " + std::to_string(key->size()) + " bytes, expected 32 for AES-256");
    return *key;
}

}  // namespace

OperationFailed::OperationFailed(Operation operation, std::uint32_t reason, const std::string& server_message)
    : std::runtime_error("KMIP " + to_string(operation) + " failed: " + describe_result(reason, server_message)),
      operation_(operation),
      reason_(reason),
      result_(describe_result(reason, server_message))
{
}

// --- payloads -------------------------------------------------------------------------------------

namespace payload {

Item create_aes256_key(const std::string& name, std::int32_t usage_mask)
{
    Item attributes = Item::structure(
        tag::template_attribute,
        {attribute("Cryptographic Algorithm", Item::enumeration(0, algorithm_aes)),
         attribute("Cryptographic Length", Item::integer(0, 256)),
         attribute("Cryptographic Usage Mask", Item::integer(0, usage_mask)),
         Item::structure(tag::attribute,
                         {Item::text_string(tag::attribute_name, "Name"), name_attribute_value(name)})});
    return Item::structure(tag::request_payload,
                           {Item::enumeration(tag::object_type, static_cast<std::uint32_t>(ObjectType::symmetric_key)),
                            std::move(attributes)});
}

Item unique_identifier_only(const std::string& uid)
{
    return Item::structure(tag::request_payload, {Item::text_string(tag::unique_identifier, uid)});
}

Item get_attributes(const std::string& uid, const std::vector<std::string>& names)
{
    Item item = unique_identifier_only(uid);
    for (const std::string& name : names)
        item.children.push_back(Item::text_string(tag::attribute_name, name));
    return item;
}

Item locate_by_name(const std::string& name)
{
    return Item::structure(tag::request_payload,
                           {Item::structure(tag::attribute, {Item::text_string(tag::attribute_name, "Name"),
                                                             name_attribute_value(name)})});
}

Item revoke(const std::string& uid, RevocationReason reason, const std::string& message)
{
    Item reason_item = Item::structure(
        tag::revocation_reason, {Item::enumeration(tag::revocation_reason_code, static_cast<std::uint32_t>(reason))});
    if (!message.empty())
        reason_item.children.push_back(Item::text_string(tag::revocation_message, message));
    return Item::structure(tag::request_payload,
                           {Item::text_string(tag::unique_identifier, uid), std::move(reason_item)});
}

Item discover_versions(const std::vector<ProtocolVersion>& offered)
{
    Item item = Item::structure(tag::request_payload);
    for (const ProtocolVersion& version : offered)
        item.children.push_back(encode_protocol_version(version));
    return item;
}

Item query(const std::vector<QueryFunction>& functions)
{
    Item item = Item::structure(tag::request_payload);
    for (QueryFunction function : functions)
        item.children.push_back(Item::enumeration(tag::query_function, static_cast<std::uint32_t>(function)));
    return item;
}

}  // namespace payload

// --- client ---------------------------------------------------------------------------------------

Client::Client(MessageChannel& channel, const UsernamePassword* credential) : channel_(channel), credential_(credential)
{
}

Item Client::run(Operation operation, Item request_payload)
{
    Request request;
    request.credential = credential_;
    request.items.push_back({operation, std::move(request_payload), {}});
    SecureBytes reply = channel_.exchange(encode_request(request));
    Response response = decode_response(reply);

    if (response.version.major != 1)
        throw TtlvError("the server's response has KMIP version " + response.version.to_string() + ", expected 1.x");
    if (response.items.size() != 1)
        throw TtlvError("the response to one request has " + std::to_string(response.items.size()) +
                        " batch items");
    ResponseBatchItem& item = response.items.front();
    if (item.status != ResultStatus::success)
        throw OperationFailed(operation, *item.reason, item.message);
    if (item.operation && *item.operation != static_cast<std::uint32_t>(operation))
        throw TtlvError("the response to " + to_string(operation) + " carries the result of " +
                        to_string(static_cast<Operation>(*item.operation)));
    if (!item.payload)
        return Item::structure(tag::response_payload);
    return std::move(*item.payload);
}

std::vector<ProtocolVersion> Client::discover_versions(const std::vector<ProtocolVersion>& offered)
{
    Item reply = run(Operation::discover_versions, payload::discover_versions(offered));
    std::vector<ProtocolVersion> versions;
    for (const Item* version : reply.find_all(tag::protocol_version))
        versions.push_back(decode_protocol_version(*version));
    return versions;
}

QueryResult Client::query(const std::vector<QueryFunction>& functions)
{
    Item reply = run(Operation::query, payload::query(functions));
    QueryResult result;
    for (const Item* operation : reply.find_all(tag::operation))
        result.operations.push_back(operation->as_enumeration());
    for (const Item* object_type : reply.find_all(tag::object_type))
        result.object_types.push_back(object_type->as_enumeration());
    if (const Item* vendor = reply.find(tag::vendor_identification))
        result.vendor = vendor->as_text();
    return result;
}

std::string Client::create_aes256_key(const std::string& name, std::int32_t usage_mask)
{
    Item reply = run(Operation::create, payload::create_aes256_key(name, usage_mask));
    if (const Item* object_type = reply.find(tag::object_type);
        object_type && object_type->as_enumeration() != static_cast<std::uint32_t>(ObjectType::symmetric_key))
        throw TtlvError("the server created an object of type " + std::to_string(object_type->as_enumeration()) +
                        ", expected a Symmetric Key (2)");
    const std::string& uid = reply.require(tag::unique_identifier).as_text();
    if (uid.empty())
        throw TtlvError("the server returned an empty Unique Identifier for the new key");
    return uid;
}

void Client::activate(const std::string& uid)
{
    expect_uid(run(Operation::activate, payload::unique_identifier_only(uid)), uid, Operation::activate);
}

SecureBytes Client::get_aes256_key(const std::string& uid)
{
    Item reply = run(Operation::get, payload::unique_identifier_only(uid));
    expect_uid(reply, uid, Operation::get);
    std::uint32_t object_type = reply.require(tag::object_type).as_enumeration();
    if (object_type != static_cast<std::uint32_t>(ObjectType::symmetric_key))
        throw TtlvError("object \"" + uid + "\" has Object Type " + std::to_string(object_type) +
                        ", expected a Symmetric Key (2)");
    return aes256_key_from(reply.require(tag::symmetric_key));
}

std::uint32_t Client::get_state(const std::string& uid)
{
    Item reply = run(Operation::get_attributes, payload::get_attributes(uid, {"State"}));
    expect_uid(reply, uid, Operation::get_attributes);
    for (const Item* attribute : reply.find_all(tag::attribute))
        if (attribute->require(tag::attribute_name).as_text() == "State")
            return attribute->require(tag::attribute_value).as_enumeration();
    throw TtlvError("the Get Attributes reply for key \"" + uid + "\" has no State attribute");
}

std::vector<std::string> Client::locate_by_name(const std::string& name)
{
    Item reply = run(Operation::locate, payload::locate_by_name(name));
    std::vector<std::string> uids;
    for (const Item* uid : reply.find_all(tag::unique_identifier))
        uids.push_back(uid->as_text());
    return uids;
}

void Client::revoke(const std::string& uid, RevocationReason reason, const std::string& message)
{
    expect_uid(run(Operation::revoke, payload::revoke(uid, reason, message)), uid, Operation::revoke);
}

void Client::destroy(const std::string& uid)
{
    expect_uid(run(Operation::destroy, payload::unique_identifier_only(uid)), uid, Operation::destroy);
}

}  // namespace vmcrypt::kmip
