// The ddb.vmcrypt.* lines of a descriptor: reading, replacing and removing vmcrypt's encryption record.
//
// Exact restoration relies on one rule for a file whose last line has no line ending. set_record()
// gives that line the file's ending and leaves the last record line without one. remove_record() takes
// the ending off again whenever the file's last line is a record line without an ending.

#include "formats/vmdk/descriptor.hpp"

#include "core/error.hpp"

#include <algorithm>

namespace vmcrypt::vmdk {

namespace {

bool is_ddb_key(std::string_view key)
{
    return key.starts_with("ddb.");
}

bool is_record_key(std::string_view key)
{
    return key.size() > record_prefix.size() && key.starts_with(record_prefix);
}

bool is_ddb_section_comment(std::string_view text)
{
    std::size_t start = text.find_first_not_of(" \t");
    if (start == std::string_view::npos)
        return false;
    std::string_view comment = text.substr(start);
    std::size_t end = comment.find_last_not_of(" \t");
    comment = comment.substr(0, end + 1);
    return comment == "#DDB" || comment == "# The Disk Data Base";
}

void validate_record_field(const std::string& file_name, const std::string& key, const std::string& value)
{
    if (key.empty())
        throw InvalidInput(file_name + ": " + std::string(record_prefix) + ": empty record key");
    for (char c : key) {
        bool valid = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.';
        if (!valid)
            throw InvalidInput(file_name + ": " + std::string(record_prefix) + key +
                               ": invalid character in record key; keys use only A-Z, a-z, 0-9 and '.'");
    }
    for (char c : value) {
        auto byte = static_cast<unsigned char>(c);
        if (c == '"' || byte < 0x20 || byte > 0x7e)
            throw InvalidInput(file_name + ": " + std::string(record_prefix) + key +
                               ": record value contains '\"', a control character or a non-ASCII byte, which a "
                               "descriptor line cannot hold");
    }
}

}  // namespace

std::optional<RecordFields> Descriptor::record() const
{
    RecordFields fields;
    for (const Pair& pair : pairs_) {
        if (is_record_key(pair.key))
            fields.emplace_back(pair.key.substr(record_prefix.size()), pair.value);
    }
    if (fields.empty())
        return std::nullopt;
    return fields;
}

void Descriptor::remove_record()
{
    std::vector<bool> remove(lines_.size(), false);
    for (const Pair& pair : pairs_) {
        if (is_record_key(pair.key))
            remove[pair.line_index] = true;
    }
    if (std::find(remove.begin(), remove.end(), true) == remove.end())
        return;

    bool last_line_lacked_ending = remove.back() && lines_.back().ending.empty();

    std::vector<Line> remaining_lines;
    remaining_lines.reserve(lines_.size());
    for (std::size_t i = 0; i < lines_.size(); ++i) {
        if (!remove[i])
            remaining_lines.push_back(std::move(lines_[i]));
    }
    lines_ = std::move(remaining_lines);

    if (last_line_lacked_ending && !lines_.empty())
        lines_.back().ending.clear();

    analyze();
}

void Descriptor::set_record(const RecordFields& fields)
{
    for (std::size_t i = 0; i < fields.size(); ++i) {
        validate_record_field(file_name_, fields[i].first, fields[i].second);
        for (std::size_t j = 0; j < i; ++j) {
            if (fields[j].first == fields[i].first)
                throw InvalidInput(file_name_ + ": " + std::string(record_prefix) + fields[i].first +
                                   ": record key given twice");
        }
    }

    remove_record();
    if (fields.empty())
        return;

    std::size_t position = record_insert_position();
    std::string ending = line_ending_style();

    std::vector<Line> added;
    for (const auto& [key, value] : fields)
        added.push_back(Line{std::string(record_prefix) + key + " = \"" + value + "\"", ending});

    if (position == lines_.size() && lines_.back().ending.empty()) {
        lines_.back().ending = ending;
        added.back().ending.clear();
    }

    lines_.insert(lines_.begin() + static_cast<std::ptrdiff_t>(position), added.begin(), added.end());
    analyze();
}

std::string Descriptor::line_ending_style() const
{
    for (const Line& line : lines_) {
        if (!line.ending.empty())
            return line.ending;
    }
    return "\n";
}

// The index before which record lines go: after the last ddb.* line, else after the DDB section's
// comment line, else at the end of the file.
std::size_t Descriptor::record_insert_position() const
{
    std::optional<std::size_t> last_ddb_line;
    for (const Pair& pair : pairs_) {
        if (is_ddb_key(pair.key) && !is_record_key(pair.key))
            last_ddb_line = std::max(last_ddb_line.value_or(0), pair.line_index);
    }
    if (last_ddb_line)
        return *last_ddb_line + 1;

    for (std::size_t i = lines_.size(); i-- > 0;) {
        if (is_ddb_section_comment(lines_[i].text))
            return i + 1;
    }
    return lines_.size();
}

}  // namespace vmcrypt::vmdk
