#include "core/kmip/ttlv.hpp"

#include "core/kmip/tags.hpp"

#include <limits>

namespace vmcrypt::kmip {

namespace {

constexpr std::size_t header_size = 8;

std::size_t padded(std::size_t length)
{
    return (length + 7) / 8 * 8;
}

bool is_known_type(std::uint8_t type)
{
    return type >= 0x01 && type <= 0x0A;
}

// Standard tags start with 0x42, extension tags with 0x54 (KMIP 1.1, section 9.1.1.1).
bool is_valid_tag(std::uint32_t tag)
{
    std::uint32_t prefix = tag >> 16;
    return prefix == 0x42 || prefix == 0x54;
}

// The value length a fixed-size type must have, or 0 for the variable-length types.
std::size_t fixed_length(ItemType type)
{
    switch (type) {
    case ItemType::integer:
    case ItemType::enumeration:
    case ItemType::interval:
        return 4;
    case ItemType::long_integer:
    case ItemType::boolean:
    case ItemType::date_time:
        return 8;
    default:
        return 0;
    }
}

bool is_utf8(std::string_view text)
{
    std::size_t i = 0;
    while (i < text.size()) {
        auto byte = static_cast<unsigned char>(text[i]);
        std::size_t extra = 0;
        std::uint32_t code = 0;
        if (byte < 0x80) {
            ++i;
            continue;
        } else if ((byte & 0xE0) == 0xC0) {
            extra = 1;
            code = byte & 0x1F;
        } else if ((byte & 0xF0) == 0xE0) {
            extra = 2;
            code = byte & 0x0F;
        } else if ((byte & 0xF8) == 0xF0) {
            extra = 3;
            code = byte & 0x07;
        } else {
            return false;
        }
        if (i + extra >= text.size())
            return false;
        for (std::size_t k = 1; k <= extra; ++k) {
            auto next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xC0) != 0x80)
                return false;
            code = (code << 6) | (next & 0x3F);
        }
        // Overlong forms, UTF-16 surrogates and values above U+10FFFF are not UTF-8.
        static constexpr std::uint32_t minimum[] = {0, 0x80, 0x800, 0x10000};
        if (code < minimum[extra] || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF)
            return false;
        i += extra + 1;
    }
    return true;
}

std::uint32_t read_be32(const std::uint8_t* p)
{
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

std::uint64_t read_be64(const std::uint8_t* p)
{
    return (std::uint64_t{read_be32(p)} << 32) | read_be32(p + 4);
}

void put_be32(SecureBytes& out, std::uint32_t value)
{
    for (int shift = 24; shift >= 0; shift -= 8)
        out.push_back(static_cast<std::uint8_t>(value >> shift));
}

void put_be64(SecureBytes& out, std::uint64_t value)
{
    put_be32(out, static_cast<std::uint32_t>(value >> 32));
    put_be32(out, static_cast<std::uint32_t>(value));
}

std::string at(std::size_t offset, std::uint32_t tag)
{
    return "TTLV item " + tag_name(tag) + " at byte " + std::to_string(offset);
}

// --- decoding -------------------------------------------------------------------------------------

class Decoder {
public:
    explicit Decoder(std::span<const std::uint8_t> data) : data_(data) {}

    // Decodes the item at `offset` (which must lie inside `end`) and returns the offset after its padding.
    std::size_t decode_item(std::size_t offset, std::size_t end, std::size_t depth, Item& item)
    {
        if (end - offset < header_size)
            throw TtlvError("truncated TTLV item at byte " + std::to_string(offset) + ": " +
                            std::to_string(end - offset) + " bytes left, an item header needs 8");
        const std::uint8_t* p = data_.data() + offset;
        item.tag = (std::uint32_t{p[0]} << 16) | (std::uint32_t{p[1]} << 8) | p[2];
        if (!is_valid_tag(item.tag))
            throw TtlvError("invalid tag " + tag_name(item.tag) + " at byte " + std::to_string(offset) +
                            " (KMIP tags start with 0x42 or 0x54)");
        if (!is_known_type(p[3]))
            throw TtlvError(at(offset, item.tag) + " has unknown type 0x" + hex_byte(p[3]));
        item.type = static_cast<ItemType>(p[3]);
        const std::size_t length = read_be32(p + 4);

        const std::size_t value_offset = offset + header_size;
        const std::size_t available = end - value_offset;
        if (length > available || padded(length) > available)
            throw TtlvError(at(offset, item.tag) + " (" + to_string(item.type) + ") has length " +
                            std::to_string(length) + " (padded to " + std::to_string(padded(length)) +
                            ") but only " + std::to_string(available) + " bytes remain in its enclosing item");
        const std::size_t fixed = fixed_length(item.type);
        if (fixed != 0 && length != fixed)
            throw TtlvError(at(offset, item.tag) + " (" + to_string(item.type) + ") has length " +
                            std::to_string(length) + ", expected " + std::to_string(fixed));

        const std::uint8_t* value = data_.data() + value_offset;
        for (std::size_t i = length; i < padded(length); ++i)
            if (value[i] != 0)
                throw TtlvError(at(offset, item.tag) + " has a non-zero padding byte at byte " +
                                std::to_string(value_offset + i));

        switch (item.type) {
        case ItemType::structure:
            if (depth + 1 >= max_nesting_depth)
                throw TtlvError(at(offset, item.tag) + " nests structures deeper than " +
                                std::to_string(max_nesting_depth) + " levels");
            decode_children(value_offset, value_offset + length, depth + 1, item);
            break;
        case ItemType::integer:
            item.number = static_cast<std::int32_t>(read_be32(value));
            break;
        case ItemType::enumeration:
        case ItemType::interval:
            item.number = read_be32(value);
            break;
        case ItemType::long_integer:
        case ItemType::date_time:
            item.number = static_cast<std::int64_t>(read_be64(value));
            break;
        case ItemType::boolean: {
            std::uint64_t raw = read_be64(value);
            if (raw > 1)
                throw TtlvError(at(offset, item.tag) + " is a Boolean with value " + std::to_string(raw) +
                                ", expected 0 or 1");
            item.number = static_cast<std::int64_t>(raw);
            break;
        }
        case ItemType::big_integer:
            if (length == 0 || length % 8 != 0)
                throw TtlvError(at(offset, item.tag) + " is a Big Integer of " + std::to_string(length) +
                                " bytes, expected a non-zero multiple of 8");
            item.bytes.assign(value, value + length);
            break;
        case ItemType::text_string:
            item.text.assign(reinterpret_cast<const char*>(value), length);
            if (!is_utf8(item.text))
                throw TtlvError(at(offset, item.tag) + " is a Text String that is not valid UTF-8");
            break;
        case ItemType::byte_string:
            item.bytes.assign(value, value + length);
            break;
        }
        return value_offset + padded(length);
    }

private:
    void decode_children(std::size_t offset, std::size_t end, std::size_t depth, Item& parent)
    {
        while (offset < end) {
            Item child;
            offset = decode_item(offset, end, depth, child);
            parent.children.push_back(std::move(child));
        }
    }

    static std::string hex_byte(std::uint8_t byte)
    {
        static const char digits[] = "0123456789ABCDEF";
        return {digits[byte >> 4], digits[byte & 0xF]};
    }

    std::span<const std::uint8_t> data_;
};

// --- encoding -------------------------------------------------------------------------------------

void encode_into(const Item& item, SecureBytes& out, std::size_t depth)
{
    if (!is_valid_tag(item.tag))
        throw TtlvError("cannot encode tag " + tag_name(item.tag) + ": KMIP tags start with 0x42 or 0x54");
    if (depth >= max_nesting_depth)
        throw TtlvError("cannot encode " + tag_name(item.tag) + ": structures nest deeper than " +
                        std::to_string(max_nesting_depth) + " levels");

    const std::size_t header_at = out.size();
    out.push_back(static_cast<std::uint8_t>(item.tag >> 16));
    out.push_back(static_cast<std::uint8_t>(item.tag >> 8));
    out.push_back(static_cast<std::uint8_t>(item.tag));
    out.push_back(static_cast<std::uint8_t>(item.type));
    put_be32(out, 0);  // the length, filled in below
    const std::size_t value_at = out.size();

    switch (item.type) {
    case ItemType::structure:
        for (const Item& child : item.children)
            encode_into(child, out, depth + 1);
        break;
    case ItemType::integer:
        if (item.number < std::numeric_limits<std::int32_t>::min() || item.number > std::numeric_limits<std::int32_t>::max())
            throw TtlvError("cannot encode " + tag_name(item.tag) + ": " + std::to_string(item.number) +
                            " does not fit an Integer (32 bits)");
        put_be32(out, static_cast<std::uint32_t>(static_cast<std::int32_t>(item.number)));
        break;
    case ItemType::enumeration:
    case ItemType::interval:
        if (item.number < 0 || item.number > std::numeric_limits<std::uint32_t>::max())
            throw TtlvError("cannot encode " + tag_name(item.tag) + ": " + std::to_string(item.number) +
                            " does not fit an unsigned 32-bit value");
        put_be32(out, static_cast<std::uint32_t>(item.number));
        break;
    case ItemType::long_integer:
    case ItemType::date_time:
        put_be64(out, static_cast<std::uint64_t>(item.number));
        break;
    case ItemType::boolean:
        put_be64(out, item.number != 0 ? 1 : 0);
        break;
    case ItemType::big_integer:
        if (item.bytes.empty() || item.bytes.size() % 8 != 0)
            throw TtlvError("cannot encode " + tag_name(item.tag) + ": a Big Integer must be a non-zero multiple "
                            "of 8 bytes, got " + std::to_string(item.bytes.size()));
        out.insert(out.end(), item.bytes.begin(), item.bytes.end());
        break;
    case ItemType::text_string: {
        const bool secret = item.text.empty() && !item.bytes.empty();
        std::string_view value = secret ? std::string_view(reinterpret_cast<const char*>(item.bytes.data()),
                                                           item.bytes.size())
                                        : std::string_view(item.text);
        if (!is_utf8(value))
            throw TtlvError("cannot encode " + tag_name(item.tag) + ": the text is not valid UTF-8");
        out.insert(out.end(), value.begin(), value.end());
        break;
    }
    case ItemType::byte_string:
        out.insert(out.end(), item.bytes.begin(), item.bytes.end());
        break;
    default:
        throw TtlvError("cannot encode " + tag_name(item.tag) + ": unknown type " +
                        std::to_string(static_cast<unsigned>(item.type)));
    }

    const std::size_t length = out.size() - value_at;
    if (length > max_message_size)
        throw TtlvError("cannot encode " + tag_name(item.tag) + ": its value is " + std::to_string(length) +
                        " bytes, above the limit of " + std::to_string(max_message_size));
    out.resize(value_at + padded(length), 0);
    for (int i = 0; i < 4; ++i)
        out[header_at + 4 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length >> (24 - 8 * i));
}

const char* type_word(ItemType type)
{
    switch (type) {
    case ItemType::structure: return "Structure";
    case ItemType::integer: return "Integer";
    case ItemType::long_integer: return "Long Integer";
    case ItemType::big_integer: return "Big Integer";
    case ItemType::enumeration: return "Enumeration";
    case ItemType::boolean: return "Boolean";
    case ItemType::text_string: return "Text String";
    case ItemType::byte_string: return "Byte String";
    case ItemType::date_time: return "Date-Time";
    case ItemType::interval: return "Interval";
    }
    return nullptr;
}

void expect_type(const Item& item, ItemType expected)
{
    if (item.type != expected)
        throw TtlvError(tag_name(item.tag) + " is a " + to_string(item.type) + ", expected a " + to_string(expected));
}

}  // namespace

std::string to_string(ItemType type)
{
    const char* word = type_word(type);
    return word ? word : "type " + std::to_string(static_cast<unsigned>(type));
}

// --- Item -----------------------------------------------------------------------------------------

Item Item::structure(std::uint32_t tag, std::vector<Item> children)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::structure;
    item.children = std::move(children);
    return item;
}

Item Item::integer(std::uint32_t tag, std::int32_t value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::integer;
    item.number = value;
    return item;
}

Item Item::long_integer(std::uint32_t tag, std::int64_t value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::long_integer;
    item.number = value;
    return item;
}

Item Item::enumeration(std::uint32_t tag, std::uint32_t value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::enumeration;
    item.number = value;
    return item;
}

Item Item::boolean(std::uint32_t tag, bool value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::boolean;
    item.number = value ? 1 : 0;
    return item;
}

Item Item::text_string(std::uint32_t tag, std::string value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::text_string;
    item.text = std::move(value);
    return item;
}

Item Item::secret_text_string(std::uint32_t tag, SecureBytes utf8_value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::text_string;
    item.bytes = std::move(utf8_value);
    return item;
}

Item Item::byte_string(std::uint32_t tag, SecureBytes value)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::byte_string;
    item.bytes = std::move(value);
    return item;
}

Item Item::date_time(std::uint32_t tag, std::int64_t posix_seconds)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::date_time;
    item.number = posix_seconds;
    return item;
}

Item Item::interval(std::uint32_t tag, std::uint32_t seconds)
{
    Item item;
    item.tag = tag;
    item.type = ItemType::interval;
    item.number = seconds;
    return item;
}

std::int32_t Item::as_integer() const
{
    expect_type(*this, ItemType::integer);
    return static_cast<std::int32_t>(number);
}

std::int64_t Item::as_long_integer() const
{
    expect_type(*this, ItemType::long_integer);
    return number;
}

std::uint32_t Item::as_enumeration() const
{
    expect_type(*this, ItemType::enumeration);
    return static_cast<std::uint32_t>(number);
}

bool Item::as_boolean() const
{
    expect_type(*this, ItemType::boolean);
    return number != 0;
}

const std::string& Item::as_text() const
{
    expect_type(*this, ItemType::text_string);
    return text;
}

const SecureBytes& Item::as_bytes() const
{
    expect_type(*this, ItemType::byte_string);
    return bytes;
}

std::int64_t Item::as_date_time() const
{
    expect_type(*this, ItemType::date_time);
    return number;
}

const Item* Item::find(std::uint32_t child_tag) const
{
    expect_type(*this, ItemType::structure);
    for (const Item& child : children)
        if (child.tag == child_tag)
            return &child;
    return nullptr;
}

std::vector<const Item*> Item::find_all(std::uint32_t child_tag) const
{
    expect_type(*this, ItemType::structure);
    std::vector<const Item*> found;
    for (const Item& child : children)
        if (child.tag == child_tag)
            found.push_back(&child);
    return found;
}

const Item& Item::require(std::uint32_t child_tag) const
{
    const Item* child = find(child_tag);
    if (!child)
        throw TtlvError(tag_name(tag) + " has no " + tag_name(child_tag));
    return *child;
}

// --- whole messages -------------------------------------------------------------------------------

SecureBytes encode(const Item& item)
{
    SecureBytes out;
    encode_into(item, out, 0);
    if (out.size() > max_message_size)
        throw TtlvError("cannot encode " + tag_name(item.tag) + ": the message is " + std::to_string(out.size()) +
                        " bytes, above the limit of " + std::to_string(max_message_size));
    return out;
}

Item decode(std::span<const std::uint8_t> data)
{
    if (data.size() > max_message_size)
        throw TtlvError("TTLV message of " + std::to_string(data.size()) + " bytes is above the limit of " +
                        std::to_string(max_message_size));
    if (data.size() % 8 != 0)
        throw TtlvError("TTLV message of " + std::to_string(data.size()) +
                        " bytes is not a multiple of 8 (every item is padded to 8 bytes)");
    Item item;
    std::size_t end = Decoder(data).decode_item(0, data.size(), 0, item);
    if (end != data.size())
        throw TtlvError("TTLV message has " + std::to_string(data.size() - end) + " bytes after its " +
                        tag_name(item.tag) + " item");
    return item;
}

std::size_t message_size_from_header(std::span<const std::uint8_t, 8> header)
{
    std::uint32_t tag = (std::uint32_t{header[0]} << 16) | (std::uint32_t{header[1]} << 8) | header[2];
    if (!is_valid_tag(tag) || header[3] != static_cast<std::uint8_t>(ItemType::structure))
        throw TtlvError("the reply does not start like a KMIP message (tag " + tag_name(tag) + ", type " +
                        std::to_string(header[3]) + "; expected a Structure with a 0x42 tag)");
    std::size_t length = read_be32(header.data() + 4);
    if (length % 8 != 0)
        throw TtlvError("the reply's " + tag_name(tag) + " has length " + std::to_string(length) +
                        ", not a multiple of 8 as a Structure's must be");
    if (length > max_message_size - header_size)
        throw TtlvError("the reply's " + tag_name(tag) + " announces " + std::to_string(length) +
                        " bytes, above the limit of " + std::to_string(max_message_size));
    return header_size + length;
}

}  // namespace vmcrypt::kmip
