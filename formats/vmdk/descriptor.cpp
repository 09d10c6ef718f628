#include "formats/vmdk/descriptor.hpp"

#include "core/error.hpp"

#include <charconv>

namespace vmcrypt::vmdk {

namespace {

// Parses a content ID: 1 to 8 hex digits. qemu writes CID with "%08x"; other writers may drop leading
// zeros, so shorter values are accepted.
std::optional<std::uint32_t> parse_content_id(std::string_view text)
{
    if (text.empty() || text.size() > 8)
        return std::nullopt;
    std::uint32_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
    if (error != std::errc() || end != text.data() + text.size())
        return std::nullopt;
    return value;
}

bool starts_with_record_prefix(std::string_view key)
{
    return key.size() > record_prefix.size() && key.substr(0, record_prefix.size()) == record_prefix;
}

}  // namespace

Descriptor Descriptor::parse(std::string_view bytes, std::string file_name)
{
    Descriptor descriptor;
    descriptor.file_name_ = std::move(file_name);

    std::size_t text_end = bytes.find('\0');
    if (text_end == std::string_view::npos)
        text_end = bytes.size();
    std::string_view text = bytes.substr(0, text_end);
    descriptor.trailer_ = std::string(bytes.substr(text_end));

    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t newline = text.find('\n', pos);
        Line line;
        if (newline == std::string_view::npos) {
            line.text = std::string(text.substr(pos));
            pos = text.size();
        } else {
            std::size_t content_end = newline;
            if (content_end > pos && text[content_end - 1] == '\r') {
                --content_end;
                line.ending = "\r\n";
            } else {
                line.ending = "\n";
            }
            line.text = std::string(text.substr(pos, content_end - pos));
            pos = newline + 1;
        }
        descriptor.lines_.push_back(std::move(line));
    }

    descriptor.analyze();
    return descriptor;
}

std::string Descriptor::where(std::size_t line_index) const
{
    return file_name_ + ": line " + std::to_string(line_index + 1);
}

void Descriptor::analyze()
{
    pairs_.clear();
    extents_.clear();
    version_ = 0;
    cid_.reset();
    parent_cid_ = no_parent_cid;
    create_type_.clear();

    for (std::size_t i = 0; i < lines_.size(); ++i) {
        const std::string& text = lines_[i].text;
        std::string location = where(i);
        check_no_control_characters(text, location);

        LineKind kind = classify_line(text);
        if (kind == LineKind::extent) {
            extents_.push_back(parse_extent_line(text, i + 1, location));
            continue;
        }
        if (kind != LineKind::key_value)
            continue;

        KeyValue pair = parse_key_value(text, location);
        for (const Pair& earlier : pairs_) {
            if (earlier.key == pair.key)
                throw InvalidInput(location + ": " + pair.key + ": set again (first set on line " +
                                   std::to_string(earlier.line_index + 1) + "); remove one of the two lines");
        }
        if (starts_with_record_prefix(pair.key)) {
            std::string field = pair.key.substr(record_prefix.size());
            if (!pair.quoted)
                throw InvalidInput(location + ": " + pair.key + ": value is not in double quotes; write " + pair.key +
                                   " = \"" + pair.value + "\"");
            for (char c : field) {
                bool valid = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.';
                if (!valid)
                    throw InvalidInput(location + ": " + pair.key +
                                       ": invalid character in a vmcrypt record key; keys use only A-Z, a-z, 0-9 and '.'");
            }
            for (char c : pair.value) {
                auto byte = static_cast<unsigned char>(c);
                if (byte < 0x20 || byte > 0x7e)
                    throw InvalidInput(location + ": " + pair.key +
                                       ": non-ASCII byte in a vmcrypt record value; the record was changed by "
                                       "another program, so restore the descriptor from a backup");
            }
        }
        pairs_.push_back(Pair{pair.key, pair.value, i});
    }

    std::optional<std::string> version = value("version");
    if (!version)
        throw InvalidInput(file_name_ + ": version: missing; add the line version=1 after # Disk DescriptorFile");
    if (*version == "1" || *version == "2" || *version == "3") {
        version_ = (*version)[0] - '0';
    } else {
        bool digits = !version->empty() && version->find_first_not_of("0123456789") == std::string::npos;
        if (!digits)
            throw InvalidInput(file_name_ + ": version: \"" + *version + "\" is not a number; write version=1");
        throw UnsupportedInput(file_name_ + ": version: descriptor version " + *version +
                               " is not supported; vmcrypt reads versions 1, 2 and 3");
    }

    if (std::optional<std::string> cid = value("CID")) {
        cid_ = parse_content_id(*cid);
        if (!cid_)
            throw InvalidInput(file_name_ + ": CID: \"" + *cid + "\" is not 1 to 8 hex digits; write CID=%08x, e.g. CID=fffffffe");
    }
    if (std::optional<std::string> parent_cid = value("parentCID")) {
        std::optional<std::uint32_t> parsed = parse_content_id(*parent_cid);
        if (!parsed)
            throw InvalidInput(file_name_ + ": parentCID: \"" + *parent_cid +
                               "\" is not 1 to 8 hex digits; write parentCID=ffffffff for a disk without a parent");
        parent_cid_ = *parsed;
    }

    std::optional<std::string> create_type = value("createType");
    if (!create_type || create_type->empty())
        throw InvalidInput(file_name_ + ": createType: missing; add the line that names the disk's layout, e.g. "
                                        "createType=\"monolithicFlat\"");
    create_type_ = *create_type;

    if (extents_.empty())
        throw InvalidInput(file_name_ + ": extent: no extent lines; a descriptor must list at least one extent as "
                                        "ACCESS SECTORS TYPE \"FILE\" [OFFSET]");
}

std::string Descriptor::text() const
{
    std::string out;
    for (const Line& line : lines_) {
        out += line.text;
        out += line.ending;
    }
    return out;
}

std::string Descriptor::serialize() const
{
    return text() + trailer_;
}

std::optional<std::string> Descriptor::value(std::string_view key) const
{
    for (const Pair& pair : pairs_) {
        if (pair.key == key)
            return pair.value;
    }
    return std::nullopt;
}

bool looks_like_descriptor(std::string_view text)
{
    text = text.substr(0, text.find('\0'));

    std::size_t pos = 0;
    bool in_leading_comments = true;
    while (pos < text.size()) {
        std::size_t newline = text.find('\n', pos);
        std::size_t end = newline == std::string_view::npos ? text.size() : newline;
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;

        std::size_t start = line.find_first_not_of(" \t\r");
        if (start == std::string_view::npos)
            continue;
        line = line.substr(start);

        if (line[0] == '#') {
            bool header = line.starts_with("# Disk DescriptorFile") || line.starts_with("# Disk Descriptor File");
            if (header && in_leading_comments)
                return true;
            continue;
        }
        in_leading_comments = false;

        if (line.starts_with("createType") && classify_line(line) == LineKind::key_value) {
            std::size_t after = line.find_first_not_of(" \t", 10);
            if (after != std::string_view::npos && line[after] == '=')
                return true;
        }
    }
    return false;
}

void Descriptor::replace_value(std::string_view key, std::string_view value)
{
    for (char c : value) {
        auto byte = static_cast<unsigned char>(c);
        if (c == '"' || byte < 0x20 || byte == 0x7f)
            throw InvalidInput(file_name_ + ": " + std::string(key) +
                               ": the new value contains '\"' or a control character, which a descriptor line "
                               "cannot hold");
    }
    for (const Pair& pair : pairs_) {
        if (pair.key != key)
            continue;
        std::string& text = lines_[pair.line_index].text;
        std::size_t start = text.find('=') + 1;
        start = text.find_first_not_of(" \t", start);
        if (start == std::string::npos)
            start = text.size();
        if (start < text.size() && text[start] == '"')
            ++start;
        text.replace(start, pair.value.size(), value);
        analyze();
        return;
    }
    throw InvalidInput(file_name_ + ": " + std::string(key) + ": missing, so its value cannot be replaced");
}

}  // namespace vmcrypt::vmdk
