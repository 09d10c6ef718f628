#pragma once
// The VMDK text descriptor, parsed without losing a byte.
//
// Every line is kept with its exact line ending (LF, CRLF, or none for a last line without one), so a
// descriptor that is parsed and serialized unchanged comes out identical. vmcrypt owns only the
// `ddb.vmcrypt.*` lines: set_record() and remove_record() touch no other line, and removing a record
// that set_record() added restores the original bytes.

#include "core/disk.hpp"
#include "formats/vmdk/descriptor_syntax.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vmcrypt::vmdk {

// parentCID of a disk without a parent.
inline constexpr std::uint32_t no_parent_cid = 0xffffffff;

// Prefix of the descriptor lines that hold vmcrypt's encryption record.
inline constexpr std::string_view record_prefix = "ddb.vmcrypt.";

class Descriptor {
public:
    // Parses a descriptor. The text ends at the first NUL byte. The bytes from there on (the NUL padding
    // that qemu and VMware write) are kept unparsed as the trailer. `file_name` starts every error
    // message. Throws InvalidInput for a malformed or incomplete descriptor and UnsupportedInput for a
    // descriptor version other than 1, 2 or 3.
    static Descriptor parse(std::string_view bytes, std::string file_name);

    std::string text() const;       // the lines with their endings, without the trailer
    std::string serialize() const;  // text() followed by the trailer
    const std::string& trailer() const { return trailer_; }
    const std::string& file_name() const { return file_name_; }

    int version() const { return version_; }
    std::optional<std::uint32_t> cid() const { return cid_; }
    std::uint32_t parent_cid() const { return parent_cid_; }  // no_parent_cid when the line is absent
    const std::string& create_type() const { return create_type_; }
    std::optional<std::string> parent_file_name_hint() const { return value("parentFileNameHint"); }
    std::optional<std::string> encryption_keys() const { return value("encryptionKeys"); }
    const std::vector<ExtentLine>& extents() const { return extents_; }

    // The value of the `key = value` line with this exact key ("ddb.thinProvisioned"), or nullopt.
    std::optional<std::string> value(std::string_view key) const;

    // The ddb.vmcrypt.* fields without the prefix, in file order, or nullopt when there are none.
    std::optional<RecordFields> record() const;

    // Replaces the ddb.vmcrypt.* lines with `fields`, appended after the last other ddb.* line in the
    // line ending that the file uses. An empty list removes the record. Throws InvalidInput for a key
    // outside [A-Za-z0-9.]+ or a value with '"', a control character or a non-ASCII byte.
    void set_record(const RecordFields& fields);

    // Removes every ddb.vmcrypt.* line.
    void remove_record();

    // Replaces the value of the existing `key = value` line, keeping the key, the spacing, the quotes and
    // the line ending. Throws InvalidInput when the line is missing or the new value has a '"' or a
    // control character.
    void replace_value(std::string_view key, std::string_view value);

private:
    struct Line {
        std::string text;    // without the line ending
        std::string ending;  // "\n", "\r\n", or "" for a last line without an ending
    };

    struct Pair {
        std::string key;
        std::string value;
        std::size_t line_index = 0;
    };

    // Classifies and validates every line and fills the fields below from them.
    void analyze();
    std::string where(std::size_t line_index) const;
    std::string line_ending_style() const;
    std::size_t record_insert_position() const;

    std::string file_name_;
    std::vector<Line> lines_;
    std::string trailer_;

    std::vector<Pair> pairs_;
    std::vector<ExtentLine> extents_;
    int version_ = 0;
    std::optional<std::uint32_t> cid_;
    std::uint32_t parent_cid_ = no_parent_cid;
    std::string create_type_;
};

// Returns whether `text` looks like a VMDK descriptor: its first line that is not blank is
// `# Disk DescriptorFile` (or `# Disk Descriptor File`), or some line sets createType. Used to probe
// files; parse() does the validation.
bool looks_like_descriptor(std::string_view text);

}  // namespace vmcrypt::vmdk
