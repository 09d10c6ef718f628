#pragma once
// Reader for the known-answer vector files in tests/data: blocks of "Name = value" lines separated by
// blank lines, with "#" comment lines.

#include "core/crypto/secure.hpp"

#include <cstdint>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace vmcrypt::test {

// One block of "Name = value" lines, with the comment lines above it for failure messages.
struct TestVector {
    std::string description;
    int line = 0;
    std::map<std::string, std::string> fields;

    const std::string& at(const std::string& name) const
    {
        const auto it = fields.find(name);
        if (it == fields.end())
            throw std::runtime_error("vector at line " + std::to_string(line) + " has no " + name + " field");
        return it->second;
    }
    bool has(const std::string& name) const { return fields.count(name) != 0; }
};

inline std::string trim(const std::string& text)
{
    const auto first = text.find_first_not_of(" \t\r");
    if (first == std::string::npos)
        return "";
    const auto last = text.find_last_not_of(" \t\r");
    return text.substr(first, last - first + 1);
}

// Reads a vector file; throws std::runtime_error when the file is missing or a line is malformed.
inline std::vector<TestVector> read_vectors(const std::string& file_name)
{
    const std::string path = std::string(VMCRYPT_TEST_DATA) + "/" + file_name;
    std::ifstream input(path);
    if (!input)
        throw std::runtime_error(path + ": cannot open the vector file");

    std::vector<TestVector> vectors;
    TestVector current;
    std::string comments;
    std::string line;
    int line_number = 0;
    auto finish_vector = [&] {
        if (!current.fields.empty())
            vectors.push_back(current);
        current = TestVector{};
    };
    while (std::getline(input, line)) {
        ++line_number;
        line = trim(line);
        if (line.empty()) {
            finish_vector();
            comments.clear();
            continue;
        }
        if (line[0] == '#') {
            comments += line + "\n";
            continue;
        }
        const auto equals = line.find('=');
        if (equals == std::string::npos)
            throw std::runtime_error(path + ":" + std::to_string(line_number) + ": expected \"Name = value\"");
        if (current.fields.empty()) {
            current.line = line_number;
            current.description = path + ":" + std::to_string(line_number) + "\n" + comments;
        }
        current.fields[trim(line.substr(0, equals))] = trim(line.substr(equals + 1));
    }
    finish_vector();
    return vectors;
}

inline std::vector<std::uint8_t> from_hex(const std::string& hex)
{
    if (hex.size() % 2 != 0)
        throw std::runtime_error("hex string of odd length " + std::to_string(hex.size()));
    std::vector<std::uint8_t> bytes(hex.size() / 2);
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    return bytes;
}

inline SecureBytes secure_from_hex(const std::string& hex)
{
    const auto bytes = from_hex(hex);
    return SecureBytes(bytes.begin(), bytes.end());
}

}  // namespace vmcrypt::test
