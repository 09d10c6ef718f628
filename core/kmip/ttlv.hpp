#pragma once
// KMIP's binary encoding, TTLV: a 3-byte tag, a 1-byte type, a 4-byte big-endian length of the value
// without padding, then the value, zero-padded to a multiple of 8 bytes. A Structure's value is the
// concatenation of its encoded children.
//
// The decoder is strict, because its input comes from the network: every length, type, padding byte,
// nesting level and size is checked, and any violation throws TtlvError naming the offset and the tag.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace vmcrypt::kmip {

// A malformed or unexpected TTLV encoding (from the decoder, or from reading a decoded item).
class TtlvError : public std::runtime_error {
public:
    explicit TtlvError(const std::string& message) : std::runtime_error(message) {}
};

enum class ItemType : std::uint8_t {
    structure = 0x01,
    integer = 0x02,       // signed 32-bit
    long_integer = 0x03,  // signed 64-bit
    big_integer = 0x04,   // two's complement, big-endian, a multiple of 8 bytes
    enumeration = 0x05,   // unsigned 32-bit
    boolean = 0x06,       // 64-bit, 0 or 1
    text_string = 0x07,   // UTF-8, no terminating NUL
    byte_string = 0x08,
    date_time = 0x09,     // POSIX seconds, signed 64-bit
    interval = 0x0A,      // unsigned 32-bit seconds
};

std::string to_string(ItemType type);

// Limits of the decoder. A KMIP response that a key client needs is a few hundred bytes; PyKMIP caps
// responses at 1 MiB, so larger input is rejected before it is buffered.
inline constexpr std::size_t max_message_size = 1 << 20;
inline constexpr std::size_t max_nesting_depth = 16;

// One decoded or to-be-encoded TTLV item. Only the member that belongs to `type` is used:
// `number` for integer, long integer, enumeration, boolean, date-time and interval; `text` for text
// strings; `bytes` for byte strings and big integers (two's complement); `children` for structures.
// Byte strings can hold key material, so they live in SecureBytes. A Text String that is a secret (a
// password) is built with secret_text_string() and keeps its value in `bytes` instead of `text`.
struct Item {
    std::uint32_t tag = 0;
    ItemType type = ItemType::structure;
    std::int64_t number = 0;
    std::string text;
    SecureBytes bytes;
    std::vector<Item> children;

    static Item structure(std::uint32_t tag, std::vector<Item> children = {});
    static Item integer(std::uint32_t tag, std::int32_t value);
    static Item long_integer(std::uint32_t tag, std::int64_t value);
    static Item enumeration(std::uint32_t tag, std::uint32_t value);
    static Item boolean(std::uint32_t tag, bool value);
    static Item text_string(std::uint32_t tag, std::string value);
    static Item secret_text_string(std::uint32_t tag, SecureBytes utf8_value);
    static Item byte_string(std::uint32_t tag, SecureBytes value);
    static Item date_time(std::uint32_t tag, std::int64_t posix_seconds);
    static Item interval(std::uint32_t tag, std::uint32_t seconds);

    // Typed access for parsing; each throws TtlvError when the item has another type.
    std::int32_t as_integer() const;
    std::int64_t as_long_integer() const;
    std::uint32_t as_enumeration() const;
    bool as_boolean() const;
    const std::string& as_text() const;
    const SecureBytes& as_bytes() const;
    std::int64_t as_date_time() const;

    // Children of a structure with this tag: the first one, or nullptr; all of them in order.
    const Item* find(std::uint32_t child_tag) const;
    std::vector<const Item*> find_all(std::uint32_t child_tag) const;
    // The first child with this tag, or TtlvError naming both tags.
    const Item& require(std::uint32_t child_tag) const;
};

// Encodes one item (usually a whole Request Message). Throws TtlvError for values TTLV cannot hold
// (a Big Integer that is not a multiple of 8 bytes, a text that is not UTF-8, a message above the limit).
SecureBytes encode(const Item& item);

// Decodes exactly one item that fills `data` completely (a whole message: 8 + length + padding bytes).
Item decode(std::span<const std::uint8_t> data);

// The length of the whole message whose 8-byte header is `header` (8 + value length, padded), for framing
// a byte stream. Throws TtlvError when the header cannot start a KMIP message of at most max_message_size.
std::size_t message_size_from_header(std::span<const std::uint8_t, 8> header);

}  // namespace vmcrypt::kmip
