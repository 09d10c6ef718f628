#pragma once
// Tokenizing of single VMDK descriptor lines: blank lines, comments, `key = value` pairs and extent lines.
//
// The grammar accepts what qemu-img 7.2 writes and the variants that qemu or libvmdk also read: spaces
// and tabs separate tokens, values may be quoted ("...") or bare, and an extent line is
// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`. Each function takes the line without its line ending and a
// prefix "FILE: line N" for its error messages.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace vmcrypt::vmdk {

enum class LineKind { blank, comment, key_value, extent };

// Classifies a line. A line is a key/value pair when it starts with a key followed by '=' and an
// extent line otherwise; the caller validates it as such.
LineKind classify_line(std::string_view line);

struct KeyValue {
    std::string key;
    std::string value;  // without the quotes
    bool quoted = false;
};

// Parses `key = "value"`, `key="value"` or `key=value`. Throws InvalidInput naming the key when the
// value is missing, has no closing quote or is followed by more text.
KeyValue parse_key_value(std::string_view line, const std::string& where);

struct ExtentLine {
    std::size_t line_number = 0;  // 1-based line of the descriptor
    std::string access;           // RW, RDONLY or NOACCESS
    std::uint64_t sectors = 0;    // guest sectors the extent covers, > 0
    std::string type;             // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE, VSANSPARSE
    std::string file;             // between the quotes, as written; empty for ZERO
    std::uint64_t offset = 0;     // sectors into the file where the extent starts (FLAT only)
};

// Parses an extent line. Throws InvalidInput naming the offending token and the expected form.
ExtentLine parse_extent_line(std::string_view line, std::size_t line_number, const std::string& where);

// Returns the parentFileNameHint value of a descriptor text that does not parse as a whole (a control
// character on another line, say), or nullopt when no line gives one. The text ends at its first NUL.
std::optional<std::string> find_parent_hint_line(std::string_view text);

// Throws InvalidInput when the line contains a control character other than TAB.
void check_no_control_characters(std::string_view line, const std::string& where);

}  // namespace vmcrypt::vmdk
