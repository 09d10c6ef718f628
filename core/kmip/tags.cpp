#include "core/kmip/tags.hpp"

#include <cstdio>
#include <utility>

namespace vmcrypt::kmip {

namespace {

std::string hex(std::uint32_t value, int digits)
{
    char text[16];
    std::snprintf(text, sizeof text, "0x%0*X", digits, static_cast<unsigned>(value));
    return text;
}

}  // namespace

std::string tag_name(std::uint32_t value)
{
    static const std::pair<std::uint32_t, const char*> names[] = {
        {tag::activation_date, "Activation Date"},
        {tag::attribute, "Attribute"},
        {tag::attribute_index, "Attribute Index"},
        {tag::attribute_name, "Attribute Name"},
        {tag::attribute_value, "Attribute Value"},
        {tag::authentication, "Authentication"},
        {tag::batch_count, "Batch Count"},
        {tag::batch_item, "Batch Item"},
        {tag::credential, "Credential"},
        {tag::credential_type, "Credential Type"},
        {tag::credential_value, "Credential Value"},
        {tag::cryptographic_algorithm, "Cryptographic Algorithm"},
        {tag::cryptographic_length, "Cryptographic Length"},
        {tag::key_block, "Key Block"},
        {tag::key_compression_type, "Key Compression Type"},
        {tag::key_format_type, "Key Format Type"},
        {tag::key_material, "Key Material"},
        {tag::key_value, "Key Value"},
        {tag::key_wrapping_data, "Key Wrapping Data"},
        {tag::maximum_items, "Maximum Items"},
        {tag::maximum_response_size, "Maximum Response Size"},
        {tag::name, "Name"},
        {tag::name_type, "Name Type"},
        {tag::name_value, "Name Value"},
        {tag::object_type, "Object Type"},
        {tag::operation, "Operation"},
        {tag::protocol_version, "Protocol Version"},
        {tag::protocol_version_major, "Protocol Version Major"},
        {tag::protocol_version_minor, "Protocol Version Minor"},
        {tag::query_function, "Query Function"},
        {tag::request_header, "Request Header"},
        {tag::request_message, "Request Message"},
        {tag::request_payload, "Request Payload"},
        {tag::response_header, "Response Header"},
        {tag::response_message, "Response Message"},
        {tag::response_payload, "Response Payload"},
        {tag::result_message, "Result Message"},
        {tag::result_reason, "Result Reason"},
        {tag::result_status, "Result Status"},
        {tag::revocation_message, "Revocation Message"},
        {tag::revocation_reason, "Revocation Reason"},
        {tag::revocation_reason_code, "Revocation Reason Code"},
        {tag::server_information, "Server Information"},
        {tag::state, "State"},
        {tag::symmetric_key, "Symmetric Key"},
        {tag::template_attribute, "Template-Attribute"},
        {tag::time_stamp, "Time Stamp"},
        {tag::unique_batch_item_id, "Unique Batch Item ID"},
        {tag::unique_identifier, "Unique Identifier"},
        {tag::username, "Username"},
        {tag::vendor_identification, "Vendor Identification"},
        {tag::password, "Password"},
    };
    for (const auto& [number, name] : names)
        if (number == value)
            return std::string(name) + " (" + hex(value, 6) + ")";
    return hex(value, 6);
}

std::string to_string(Operation operation)
{
    switch (operation) {
    case Operation::create: return "Create";
    case Operation::locate: return "Locate";
    case Operation::get: return "Get";
    case Operation::get_attributes: return "Get Attributes";
    case Operation::activate: return "Activate";
    case Operation::revoke: return "Revoke";
    case Operation::destroy: return "Destroy";
    case Operation::query: return "Query";
    case Operation::discover_versions: return "Discover Versions";
    }
    return "operation " + hex(static_cast<std::uint32_t>(operation), 2);
}

std::string result_reason_name(std::uint32_t reason)
{
    switch (static_cast<ResultReason>(reason)) {
    case ResultReason::item_not_found: return "Item Not Found";
    case ResultReason::response_too_large: return "Response Too Large";
    case ResultReason::authentication_not_successful: return "Authentication Not Successful";
    case ResultReason::invalid_message: return "Invalid Message";
    case ResultReason::operation_not_supported: return "Operation Not Supported";
    case ResultReason::missing_data: return "Missing Data";
    case ResultReason::invalid_field: return "Invalid Field";
    case ResultReason::feature_not_supported: return "Feature Not Supported";
    case ResultReason::operation_canceled_by_requester: return "Operation Canceled By Requester";
    case ResultReason::cryptographic_failure: return "Cryptographic Failure";
    case ResultReason::illegal_operation: return "Illegal Operation";
    case ResultReason::permission_denied: return "Permission Denied";
    case ResultReason::object_archived: return "Object Archived";
    case ResultReason::index_out_of_bounds: return "Index Out Of Bounds";
    case ResultReason::application_namespace_not_supported: return "Application Namespace Not Supported";
    case ResultReason::key_format_type_not_supported: return "Key Format Type Not Supported";
    case ResultReason::key_compression_type_not_supported: return "Key Compression Type Not Supported";
    case ResultReason::general_failure: return "General Failure";
    }
    return "reason " + hex(reason, 2);
}

std::string key_state_name(std::uint32_t state)
{
    switch (static_cast<KeyState>(state)) {
    case KeyState::pre_active: return "Pre-Active";
    case KeyState::active: return "Active";
    case KeyState::deactivated: return "Deactivated";
    case KeyState::compromised: return "Compromised";
    case KeyState::destroyed: return "Destroyed";
    case KeyState::destroyed_compromised: return "Destroyed Compromised";
    }
    return "state " + std::to_string(state);
}

}  // namespace vmcrypt::kmip
