#pragma once
// KMIP 1.1 tag numbers and enumeration values that a key client uses (values as in the KMIP 1.1
// specification, section 9.1.3, and PyKMIP 0.10 kmip/core/enums.py).

#include <cstdint>
#include <string>

namespace vmcrypt::kmip {

namespace tag {
inline constexpr std::uint32_t activation_date = 0x420001;
inline constexpr std::uint32_t attribute = 0x420008;
inline constexpr std::uint32_t attribute_index = 0x420009;
inline constexpr std::uint32_t attribute_name = 0x42000A;
inline constexpr std::uint32_t attribute_value = 0x42000B;
inline constexpr std::uint32_t authentication = 0x42000C;
inline constexpr std::uint32_t batch_count = 0x42000D;
inline constexpr std::uint32_t batch_item = 0x42000F;
inline constexpr std::uint32_t credential = 0x420023;
inline constexpr std::uint32_t credential_type = 0x420024;
inline constexpr std::uint32_t credential_value = 0x420025;
inline constexpr std::uint32_t cryptographic_algorithm = 0x420028;
inline constexpr std::uint32_t cryptographic_length = 0x42002A;
inline constexpr std::uint32_t key_block = 0x420040;
inline constexpr std::uint32_t key_compression_type = 0x420041;
inline constexpr std::uint32_t key_format_type = 0x420042;
inline constexpr std::uint32_t key_material = 0x420043;
inline constexpr std::uint32_t key_value = 0x420045;
inline constexpr std::uint32_t key_wrapping_data = 0x420046;
inline constexpr std::uint32_t maximum_items = 0x42004F;
inline constexpr std::uint32_t maximum_response_size = 0x420050;
inline constexpr std::uint32_t name = 0x420053;
inline constexpr std::uint32_t name_type = 0x420054;
inline constexpr std::uint32_t name_value = 0x420055;
inline constexpr std::uint32_t object_type = 0x420057;
inline constexpr std::uint32_t operation = 0x42005C;
inline constexpr std::uint32_t protocol_version = 0x420069;
inline constexpr std::uint32_t protocol_version_major = 0x42006A;
inline constexpr std::uint32_t protocol_version_minor = 0x42006B;
inline constexpr std::uint32_t query_function = 0x420074;
inline constexpr std::uint32_t request_header = 0x420077;
inline constexpr std::uint32_t request_message = 0x420078;
inline constexpr std::uint32_t request_payload = 0x420079;
inline constexpr std::uint32_t response_header = 0x42007A;
inline constexpr std::uint32_t response_message = 0x42007B;
inline constexpr std::uint32_t response_payload = 0x42007C;
inline constexpr std::uint32_t result_message = 0x42007D;
inline constexpr std::uint32_t result_reason = 0x42007E;
inline constexpr std::uint32_t result_status = 0x42007F;
inline constexpr std::uint32_t revocation_message = 0x420080;
inline constexpr std::uint32_t revocation_reason = 0x420081;
inline constexpr std::uint32_t revocation_reason_code = 0x420082;
inline constexpr std::uint32_t server_information = 0x420088;
inline constexpr std::uint32_t state = 0x42008D;
inline constexpr std::uint32_t symmetric_key = 0x42008F;
inline constexpr std::uint32_t template_attribute = 0x420091;
inline constexpr std::uint32_t time_stamp = 0x420092;
inline constexpr std::uint32_t unique_batch_item_id = 0x420093;
inline constexpr std::uint32_t unique_identifier = 0x420094;
inline constexpr std::uint32_t username = 0x420099;
inline constexpr std::uint32_t vendor_identification = 0x42009D;
inline constexpr std::uint32_t password = 0x4200A1;
}  // namespace tag

// "Unique Identifier (0x420094)" for known tags, "0x54AB01" for others.
std::string tag_name(std::uint32_t tag);

enum class Operation : std::uint32_t {
    create = 0x01,
    locate = 0x08,
    get = 0x0A,
    get_attributes = 0x0B,
    activate = 0x12,
    revoke = 0x13,
    destroy = 0x14,
    query = 0x18,
    discover_versions = 0x1E,
};

std::string to_string(Operation operation);

enum class ObjectType : std::uint32_t { symmetric_key = 0x02 };

enum class ResultStatus : std::uint32_t { success = 0, operation_failed = 1, operation_pending = 2, operation_undone = 3 };

enum class ResultReason : std::uint32_t {
    item_not_found = 0x01,
    response_too_large = 0x02,
    authentication_not_successful = 0x03,
    invalid_message = 0x04,
    operation_not_supported = 0x05,
    missing_data = 0x06,
    invalid_field = 0x07,
    feature_not_supported = 0x08,
    operation_canceled_by_requester = 0x09,
    cryptographic_failure = 0x0A,
    illegal_operation = 0x0B,
    permission_denied = 0x0C,
    object_archived = 0x0D,
    index_out_of_bounds = 0x0E,
    application_namespace_not_supported = 0x0F,
    key_format_type_not_supported = 0x10,
    key_compression_type_not_supported = 0x11,
    general_failure = 0x100,
};

// "Permission Denied" as the specification spells it; "reason 0x2A" for unknown values.
std::string result_reason_name(std::uint32_t reason);

enum class KeyState : std::uint32_t {
    pre_active = 1,
    active = 2,
    deactivated = 3,
    compromised = 4,
    destroyed = 5,
    destroyed_compromised = 6,
};

// "Pre-Active", "Active", ...; "state 9" for unknown values.
std::string key_state_name(std::uint32_t state);

enum class RevocationReason : std::uint32_t {
    unspecified = 1,
    key_compromise = 2,
    cessation_of_operation = 6,
};

enum class QueryFunction : std::uint32_t { operations = 1, objects = 2, server_information = 3 };

inline constexpr std::uint32_t algorithm_aes = 3;
inline constexpr std::uint32_t key_format_raw = 1;
inline constexpr std::uint32_t name_type_uninterpreted_text = 1;
inline constexpr std::uint32_t credential_username_password = 1;

// Cryptographic Usage Mask bits (an Integer attribute, not an Enumeration).
namespace usage {
inline constexpr std::int32_t encrypt = 0x04;
inline constexpr std::int32_t decrypt = 0x08;
inline constexpr std::int32_t wrap_key = 0x10;
inline constexpr std::int32_t unwrap_key = 0x20;
}  // namespace usage

}  // namespace vmcrypt::kmip
