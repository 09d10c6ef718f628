#include "formats/vmdk/descriptor_syntax.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <optional>
#include <vector>

namespace vmcrypt::vmdk {

namespace {

constexpr std::string_view extent_form = "write extent lines as ACCESS SECTORS TYPE \"FILE\" [OFFSET]";

constexpr std::array<std::string_view, 3> access_modes = {"RW", "RDONLY", "NOACCESS"};

constexpr std::array<std::string_view, 9> extent_types = {
    "FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW", "SESPARSE", "VSANSPARSE",
};

bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-' || c == ':';
}

std::size_t skip_spaces(std::string_view line, std::size_t pos)
{
    while (pos < line.size() && is_space(line[pos]))
        ++pos;
    return pos;
}

// Parses a decimal number of digits only (no sign, no spaces), or returns nullopt.
std::optional<std::uint64_t> parse_decimal(std::string_view text)
{
    if (text.empty())
        return std::nullopt;
    for (char c : text) {
        if (c < '0' || c > '9')
            return std::nullopt;
    }
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size())
        return std::nullopt;
    return value;
}

struct Token {
    std::string text;
    bool quoted = false;
};

// Splits an extent line into tokens. A token starting with '"' runs to the next '"' and may contain spaces.
std::vector<Token> split_extent_tokens(std::string_view line, const std::string& where)
{
    std::vector<Token> tokens;
    std::size_t pos = skip_spaces(line, 0);
    while (pos < line.size()) {
        Token token;
        if (line[pos] == '"') {
            std::size_t close = line.find('"', pos + 1);
            if (close == std::string_view::npos)
                throw InvalidInput(where + ": extent: file name has no closing '\"'; " + std::string(extent_form));
            token.text = std::string(line.substr(pos + 1, close - pos - 1));
            token.quoted = true;
            pos = close + 1;
            if (pos < line.size() && !is_space(line[pos]))
                throw InvalidInput(where + ": extent: text follows the closing '\"' of the file name without a space; " +
                                   std::string(extent_form));
        } else {
            std::size_t end = pos;
            while (end < line.size() && !is_space(line[end]))
                ++end;
            token.text = std::string(line.substr(pos, end - pos));
            pos = end;
        }
        tokens.push_back(std::move(token));
        pos = skip_spaces(line, pos);
    }
    return tokens;
}

}  // namespace

LineKind classify_line(std::string_view line)
{
    std::size_t pos = skip_spaces(line, 0);
    if (pos == line.size())
        return LineKind::blank;
    if (line[pos] == '#')
        return LineKind::comment;

    std::size_t key_end = pos;
    while (key_end < line.size() && is_key_char(line[key_end]))
        ++key_end;
    if (key_end > pos) {
        std::size_t after = skip_spaces(line, key_end);
        if (after < line.size() && line[after] == '=')
            return LineKind::key_value;
    }
    return LineKind::extent;
}

std::optional<std::string> find_parent_hint_line(std::string_view text)
{
    text = text.substr(0, text.find('\0'));
    while (!text.empty()) {
        std::size_t end = text.find('\n');
        std::string_view line = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
        if (line.ends_with('\r'))
            line.remove_suffix(1);
        if (classify_line(line) != LineKind::key_value)
            continue;
        try {
            KeyValue pair = parse_key_value(line, "");
            if (pair.key == "parentFileNameHint")
                return pair.value;
        } catch (const InvalidInput&) {
            continue;
        }
    }
    return std::nullopt;
}

KeyValue parse_key_value(std::string_view line, const std::string& where)
{
    KeyValue result;
    std::size_t pos = skip_spaces(line, 0);
    std::size_t key_end = pos;
    while (key_end < line.size() && is_key_char(line[key_end]))
        ++key_end;
    result.key = std::string(line.substr(pos, key_end - pos));

    pos = skip_spaces(line, key_end);
    ++pos;  // the '=' that classify_line() found
    pos = skip_spaces(line, pos);
    if (pos == line.size())
        throw InvalidInput(where + ": " + result.key + ": no value after '='; write " + result.key + " = \"VALUE\"");

    if (line[pos] == '"') {
        std::size_t close = line.find('"', pos + 1);
        if (close == std::string_view::npos)
            throw InvalidInput(where + ": " + result.key + ": value has no closing '\"'; write " + result.key +
                               " = \"VALUE\"");
        result.value = std::string(line.substr(pos + 1, close - pos - 1));
        result.quoted = true;
        pos = close + 1;
    } else {
        std::size_t end = pos;
        while (end < line.size() && !is_space(line[end]) && line[end] != '"')
            ++end;
        result.value = std::string(line.substr(pos, end - pos));
        pos = end;
    }

    pos = skip_spaces(line, pos);
    if (pos != line.size())
        throw InvalidInput(where + ": " + result.key + ": unexpected text \"" + std::string(line.substr(pos)) +
                           "\" after the value; write " + result.key + " = \"VALUE\" alone on the line");
    return result;
}

ExtentLine parse_extent_line(std::string_view line, std::size_t line_number, const std::string& where)
{
    std::vector<Token> tokens = split_extent_tokens(line, where);
    if (tokens.size() < 3)
        throw InvalidInput(where + ": extent: expected at least ACCESS SECTORS TYPE, found " +
                           std::to_string(tokens.size()) + " field(s); " + std::string(extent_form));
    if (tokens.size() > 5)
        throw InvalidInput(where + ": extent: unexpected text \"" + tokens[5].text + "\" after the offset; " +
                           std::string(extent_form));
    for (std::size_t i = 0; i < 3; ++i) {
        if (tokens[i].quoted)
            throw InvalidInput(where + ": extent: field " + std::to_string(i + 1) + " \"" + tokens[i].text +
                               "\" must not be quoted; " + std::string(extent_form));
    }

    ExtentLine extent;
    extent.line_number = line_number;

    extent.access = tokens[0].text;
    if (std::ranges::find(access_modes, extent.access) == access_modes.end())
        throw InvalidInput(where + ": extent: access \"" + extent.access +
                           "\" is not RW, RDONLY or NOACCESS; write it in upper case as one of these");

    std::optional<std::uint64_t> sectors = parse_decimal(tokens[1].text);
    if (!sectors)
        throw InvalidInput(where + ": extent: sector count \"" + tokens[1].text +
                           "\" is not a number; write the extent size in 512-byte sectors as a decimal number");
    if (*sectors == 0)
        throw InvalidInput(where + ": extent: sector count is 0; an extent must cover at least one sector");
    if (*sectors > UINT64_MAX / 512)
        throw InvalidInput(where + ": extent: sector count " + tokens[1].text +
                           " is too large (its byte size does not fit in 64 bits); correct the extent size");
    extent.sectors = *sectors;

    extent.type = tokens[2].text;
    if (std::ranges::find(extent_types, extent.type) == extent_types.end())
        throw InvalidInput(where + ": extent: unknown extent type \"" + extent.type +
                           "\"; expected FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE or VSANSPARSE");

    if (extent.type == "ZERO") {
        if (tokens.size() > 3)
            throw InvalidInput(where + ": extent: a ZERO extent has no file, but \"" + tokens[3].text +
                               "\" follows; write ACCESS SECTORS ZERO");
        return extent;
    }

    if (tokens.size() < 4)
        throw InvalidInput(where + ": extent: " + extent.type + " extent has no file name; " +
                           std::string(extent_form));
    if (!tokens[3].quoted)
        throw InvalidInput(where + ": extent: file name " + tokens[3].text + " is not in double quotes; write \"" +
                           tokens[3].text + "\"");
    if (tokens[3].text.empty())
        throw InvalidInput(where + ": extent: file name is empty; name the extent file between the quotes");
    extent.file = tokens[3].text;

    if (tokens.size() == 5) {
        if (extent.type != "FLAT")
            throw InvalidInput(where + ": extent: offset \"" + tokens[4].text + "\" is allowed only for FLAT extents, not " +
                               extent.type + "; remove it");
        std::optional<std::uint64_t> offset = tokens[4].quoted ? std::nullopt : parse_decimal(tokens[4].text);
        if (!offset)
            throw InvalidInput(where + ": extent: offset \"" + tokens[4].text +
                               "\" is not a number; write the offset in 512-byte sectors as a decimal number");
        if (*offset > UINT64_MAX / 512 - extent.sectors)
            throw InvalidInput(where + ": extent: offset " + tokens[4].text +
                               " is too large (the extent's end does not fit in 64 bits); correct the offset");
        extent.offset = *offset;
    }
    return extent;
}

void check_no_control_characters(std::string_view line, const std::string& where)
{
    for (char c : line) {
        auto byte = static_cast<unsigned char>(c);
        if ((byte < 0x20 && c != '\t') || byte == 0x7f) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "0x%02x", byte);
            throw InvalidInput(where + ": control character " + hex +
                               " in the line; a descriptor is plain text, so remove the character");
        }
    }
}

}  // namespace vmcrypt::vmdk
