#include "core/kmip/messages.hpp"

namespace vmcrypt::kmip {

Item encode_protocol_version(const ProtocolVersion& version)
{
    return Item::structure(tag::protocol_version, {Item::integer(tag::protocol_version_major, version.major),
                                                    Item::integer(tag::protocol_version_minor, version.minor)});
}

ProtocolVersion decode_protocol_version(const Item& item)
{
    if (item.tag != tag::protocol_version)
        throw TtlvError("expected " + tag_name(tag::protocol_version) + ", found " + tag_name(item.tag));
    return {item.require(tag::protocol_version_major).as_integer(),
            item.require(tag::protocol_version_minor).as_integer()};
}

namespace {

Item encode_authentication(const UsernamePassword& credential)
{
    std::vector<Item> value{Item::text_string(tag::username, credential.username)};
    if (!credential.password.empty())
        value.push_back(Item::secret_text_string(tag::password, credential.password));
    return Item::structure(
        tag::authentication,
        {Item::structure(tag::credential,
                         {Item::enumeration(tag::credential_type, credential_username_password),
                          Item::structure(tag::credential_value, std::move(value))})});
}

ResponseBatchItem decode_batch_item(const Item& item, std::size_t index)
{
    const std::string where = "batch item " + std::to_string(index + 1);
    if (item.type != ItemType::structure)
        throw TtlvError(where + " is a " + to_string(item.type) + ", expected a Structure");

    ResponseBatchItem result;
    if (const Item* operation = item.find(tag::operation))
        result.operation = operation->as_enumeration();
    if (const Item* id = item.find(tag::unique_batch_item_id))
        result.batch_id.assign(id->as_bytes().begin(), id->as_bytes().end());

    std::uint32_t status = item.require(tag::result_status).as_enumeration();
    if (status > static_cast<std::uint32_t>(ResultStatus::operation_undone))
        throw TtlvError(where + " has unknown Result Status " + std::to_string(status));
    result.status = static_cast<ResultStatus>(status);
    if (const Item* reason = item.find(tag::result_reason))
        result.reason = reason->as_enumeration();
    if (result.status != ResultStatus::success && !result.reason)
        throw TtlvError(where + " failed without a " + tag_name(tag::result_reason));
    if (const Item* message = item.find(tag::result_message))
        result.message = message->as_text();

    if (const Item* payload = item.find(tag::response_payload)) {
        if (payload->type != ItemType::structure)
            throw TtlvError(where + ": " + tag_name(tag::response_payload) + " is a " + to_string(payload->type) +
                            ", expected a Structure");
        result.payload = *payload;
    }
    return result;
}

}  // namespace

SecureBytes encode_request(const Request& request)
{
    std::vector<Item> header{encode_protocol_version(request.version)};
    if (request.credential)
        header.push_back(encode_authentication(*request.credential));
    header.push_back(Item::integer(tag::batch_count, static_cast<std::int32_t>(request.items.size())));

    std::vector<Item> message{Item::structure(tag::request_header, std::move(header))};
    for (const RequestBatchItem& batch_item : request.items) {
        std::vector<Item> fields{Item::enumeration(tag::operation, static_cast<std::uint32_t>(batch_item.operation))};
        if (!batch_item.batch_id.empty())
            fields.push_back(Item::byte_string(tag::unique_batch_item_id,
                                               SecureBytes(batch_item.batch_id.begin(), batch_item.batch_id.end())));
        fields.push_back(batch_item.payload);
        message.push_back(Item::structure(tag::batch_item, std::move(fields)));
    }
    return encode(Item::structure(tag::request_message, std::move(message)));
}

Response decode_response(std::span<const std::uint8_t> bytes)
{
    Item message = decode(bytes);
    if (message.tag != tag::response_message || message.type != ItemType::structure)
        throw TtlvError("the reply is a " + tag_name(message.tag) + " " + to_string(message.type) +
                        ", expected a Response Message structure");

    const Item& header = message.require(tag::response_header);
    if (header.type != ItemType::structure)
        throw TtlvError(tag_name(tag::response_header) + " is a " + to_string(header.type) + ", expected a Structure");
    Response response;
    response.version = decode_protocol_version(header.require(tag::protocol_version));
    response.time_stamp = header.require(tag::time_stamp).as_date_time();
    std::int32_t batch_count = header.require(tag::batch_count).as_integer();

    std::vector<const Item*> items = message.find_all(tag::batch_item);
    if (batch_count < 0 || static_cast<std::size_t>(batch_count) != items.size())
        throw TtlvError("the Response Header announces " + std::to_string(batch_count) + " batch items but the "
                        "message has " + std::to_string(items.size()));
    if (items.empty())
        throw TtlvError("the Response Message has no batch item");
    for (std::size_t i = 0; i < items.size(); ++i)
        response.items.push_back(decode_batch_item(*items[i], i));
    return response;
}

}  // namespace vmcrypt::kmip
