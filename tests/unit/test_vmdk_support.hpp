#pragma once
// Helpers for the VMDK tests: temporary folders, qemu-img and qemu-io runs, file hashes and byte patches.
//
// Disks are made by the real qemu-img and qemu-io; a missing tool makes run_command() throw, so the
// test fails instead of being skipped.

#include "core/disk.hpp"

#include <botan/hash.h>
#include <botan/hex.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <vector>

namespace vmcrypt::test {

// A folder under the system temporary directory, removed with its contents on destruction.
class TempFolder {
public:
    explicit TempFolder(const std::filesystem::path& parent = std::filesystem::temp_directory_path())
    {
        std::string pattern = (parent / "vmcrypt-vmdk-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr)
            throw std::runtime_error("mkdtemp failed for " + pattern);
        path_ = pattern;
    }
    TempFolder(const TempFolder&) = delete;
    TempFolder& operator=(const TempFolder&) = delete;
    ~TempFolder()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

// Quotes a string for /bin/sh.
inline std::string shell_quote(const std::string& text)
{
    std::string quoted = "'";
    for (char c : text) {
        if (c == '\'')
            quoted += "'\\''";
        else
            quoted += c;
    }
    return quoted + "'";
}

inline std::string shell_quote(const std::filesystem::path& path)
{
    return shell_quote(path.string());
}

// Runs a shell command and returns its standard output. Throws std::runtime_error with the command and
// its output when it exits with a status other than 0 (including "command not found").
inline std::string run_command(const std::string& command)
{
    FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr)
        throw std::runtime_error("popen failed for: " + command);
    std::string output;
    std::array<char, 4096> buffer{};
    std::size_t count = 0;
    while ((count = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
        output.append(buffer.data(), count);
    int status = ::pclose(pipe);
    if (status != 0)
        throw std::runtime_error("command failed (status " + std::to_string(status) + "): " + command + "\n" + output);
    return output;
}

inline std::string read_file(const std::filesystem::path& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + path.string());
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const std::filesystem::path& path, const std::string& bytes)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out)
        throw std::runtime_error("cannot write " + path.string());
}

inline std::string sha256_of_file(const std::filesystem::path& path)
{
    std::unique_ptr<Botan::HashFunction> hash = Botan::HashFunction::create_or_throw("SHA-256");
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + path.string());
    std::vector<char> buffer(1 << 16);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        hash->update(reinterpret_cast<const std::uint8_t*>(buffer.data()), static_cast<std::size_t>(in.gcount()));
    }
    return Botan::hex_encode(hash->final());
}

// SHA-256 of every regular file in a folder, by file name.
inline std::map<std::string, std::string> hash_folder(const std::filesystem::path& folder)
{
    std::map<std::string, std::string> hashes;
    for (const auto& entry : std::filesystem::directory_iterator(folder)) {
        if (entry.is_regular_file())
            hashes[entry.path().filename().string()] = sha256_of_file(entry.path());
    }
    return hashes;
}

// Overwrites `size` bytes at `offset` of a file with `value` in little-endian order.
inline void patch_le(const std::filesystem::path& path, std::uint64_t offset, std::uint64_t value, int size)
{
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    if (!file)
        throw std::runtime_error("cannot open " + path.string());
    file.seekp(static_cast<std::streamoff>(offset));
    for (int i = 0; i < size; ++i) {
        char byte = static_cast<char>((value >> (8 * i)) & 0xff);
        file.write(&byte, 1);
    }
    if (!file)
        throw std::runtime_error("cannot patch " + path.string());
}

inline std::uint64_t read_le(const std::filesystem::path& path, std::uint64_t offset, int size)
{
    std::string bytes = read_file(path);
    std::uint64_t value = 0;
    for (int i = 0; i < size; ++i)
        value |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes.at(offset + i))) << (8 * i);
    return value;
}

// A guest range stored in a host file, as (guest byte, length, host byte in its extent file).
struct MappedRange {
    std::uint64_t guest = 0;
    std::uint64_t length = 0;
    std::uint64_t host = 0;

    bool operator==(const MappedRange&) const = default;
};

inline std::ostream& operator<<(std::ostream& out, const MappedRange& range)
{
    return out << "{guest " << range.guest << ", length " << range.length << ", host " << range.host << "}";
}

// Merges ranges that continue each other in guest and host bytes without crossing a guest boundary
// (the extents' starts). Both qemu-img map and data_runs() merge, but not always alike.
inline std::vector<MappedRange> merge_ranges(const std::vector<MappedRange>& ranges,
                                             const std::vector<std::uint64_t>& boundaries)
{
    std::vector<MappedRange> merged;
    for (const MappedRange& range : ranges) {
        bool at_boundary = false;
        for (std::uint64_t boundary : boundaries)
            at_boundary = at_boundary || boundary == range.guest;
        if (!merged.empty() && !at_boundary) {
            MappedRange& last = merged.back();
            if (last.guest + last.length == range.guest && last.host + last.length == range.host) {
                last.length += range.length;
                continue;
            }
        }
        merged.push_back(range);
    }
    return merged;
}

// The ranges that `qemu-img map --output=json` reports as holding data: "data" true and "zero" false.
// For flat extents qemu reports host holes as data that reads as zero, so they are left out too.
inline std::vector<MappedRange> qemu_data_ranges(const std::filesystem::path& disk)
{
    std::string output = run_command("qemu-img map -f vmdk --output=json " + shell_quote(disk));
    nlohmann::json entries = nlohmann::json::parse(output);
    std::vector<MappedRange> ranges;
    for (const nlohmann::json& entry : entries) {
        if (!entry.at("data").get<bool>() || entry.at("zero").get<bool>())
            continue;
        ranges.push_back(MappedRange{entry.at("start").get<std::uint64_t>(), entry.at("length").get<std::uint64_t>(),
                                     entry.at("offset").get<std::uint64_t>()});
    }
    return ranges;
}

inline std::vector<MappedRange> ranges_of_runs(const std::vector<DataRun>& runs)
{
    std::vector<MappedRange> ranges;
    for (const DataRun& run : runs)
        ranges.push_back(MappedRange{run.first_sector * 512, run.length, run.host_offset});
    return ranges;
}

}  // namespace vmcrypt::test
