#include "formats/vmdk/consolidate_intent.hpp"

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/vmx_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace vmcrypt::vmdk {

namespace {

constexpr const char* schema = "vmcrypt-consolidate-intent/1";

// Made absolute first, because weakly_canonical() leaves a relative path relative when its first
// component does not exist (a bare file name of a removed delta).
std::filesystem::path comparable(const std::filesystem::path& path)
{
    std::filesystem::path absolute = std::filesystem::absolute(path).lexically_normal();
    std::error_code error;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, error);
    return error ? absolute : canonical;
}

std::string encode_hex(const std::vector<std::uint8_t>& bytes)
{
    static const char digits[] = "0123456789abcdef";
    std::string text;
    text.reserve(bytes.size() * 2);
    for (std::uint8_t byte : bytes) {
        text += digits[byte >> 4];
        text += digits[byte & 0xf];
    }
    return text;
}

std::vector<std::uint8_t> decode_hex(const std::string& text, const std::filesystem::path& path)
{
    auto digit = [&](char c) -> std::uint8_t {
        if (c >= '0' && c <= '9')
            return static_cast<std::uint8_t>(c - '0');
        if (c >= 'a' && c <= 'f')
            return static_cast<std::uint8_t>(c - 'a' + 10);
        throw InvalidInput(path.string() + ": topDescriptorHex: not lower-case hex digits; the intent file is damaged");
    };
    if (text.size() % 2 != 0)
        throw InvalidInput(path.string() + ": topDescriptorHex: odd number of hex digits; the intent file is damaged");
    std::vector<std::uint8_t> bytes(text.size() / 2);
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::uint8_t>(digit(text[2 * i]) << 4 | digit(text[2 * i + 1]));
    return bytes;
}

}  // namespace

bool ConsolidateIntent::mentions(const std::filesystem::path& path) const
{
    std::filesystem::path wanted = comparable(path);
    auto same = [&](const std::string& other) { return comparable(other) == wanted; };
    return same(base) || same(top) || std::any_of(deltas.begin(), deltas.end(), same) ||
           std::any_of(remove_files.begin(), remove_files.end(), same) ||
           std::any_of(branch_files.begin(), branch_files.end(), same);
}

std::optional<ConsolidateIntent> read_consolidate_intent(const std::filesystem::path& path)
{
    std::error_code error;
    if (!std::filesystem::exists(path, error))
        return std::nullopt;
    std::string text = read_small_file(path, 16 << 20);
    try {
        nlohmann::json json = nlohmann::json::parse(text);
        if (json.at("schema").get<std::string>() != schema)
            throw InvalidInput(path.string() + ": schema: \"" + json.at("schema").get<std::string>() +
                               "\" is not " + schema + "; finish the merge with the vmcrypt version that started it");
        ConsolidateIntent intent;
        std::string phase = json.at("phase").get<std::string>();
        if (phase == "copy")
            intent.phase = ConsolidatePhase::copy;
        else if (phase == "switch")
            intent.phase = ConsolidatePhase::switch_metadata;
        else
            throw InvalidInput(path.string() + ": phase: \"" + phase + "\" is neither \"copy\" nor \"switch\"");
        std::string strategy = json.at("strategy").get<std::string>();
        if (strategy == "commit")
            intent.strategy = MergeStrategy::commit;
        else if (strategy == "stream")
            intent.strategy = MergeStrategy::stream;
        else
            throw InvalidInput(path.string() + ": strategy: \"" + strategy + "\" is neither \"commit\" nor \"stream\"");
        intent.base = json.at("base").get<std::string>();
        intent.top = json.at("top").get<std::string>();
        intent.deltas = json.at("deltas").get<std::vector<std::string>>();
        intent.remove_files = json.at("removeFiles").get<std::vector<std::string>>();
        intent.branch_files = json.at("branchFiles").get<std::vector<std::string>>();
        intent.vmx_files = json.at("vmxFiles").get<std::vector<std::string>>();
        intent.old_cid = json.at("oldCid").get<std::string>();
        intent.new_cid = json.at("newCid").get<std::string>();
        intent.top_descriptor = decode_hex(json.at("topDescriptorHex").get<std::string>(), path);
        for (const nlohmann::json& entry : json.at("sparseFileSizes"))
            intent.sparse_file_sizes.emplace_back(entry.at("file").get<std::string>(),
                                                  entry.at("size").get<std::uint64_t>());
        return intent;
    } catch (const nlohmann::json::exception& e) {
        throw InvalidInput(path.string() + ": the consolidation intent file is damaged (" + e.what() +
                           "); keep the disk files as they are and restore the chain from a backup, or, if the "
                           "merge is known to have finished, remove the intent file");
    }
}

void write_consolidate_intent(const std::filesystem::path& path, const ConsolidateIntent& intent)
{
    nlohmann::json sizes = nlohmann::json::array();
    for (const auto& [file, size] : intent.sparse_file_sizes)
        sizes.push_back({{"file", file}, {"size", size}});
    nlohmann::json json = {
        {"schema", schema},
        {"phase", intent.phase == ConsolidatePhase::copy ? "copy" : "switch"},
        {"strategy", intent.strategy == MergeStrategy::commit ? "commit" : "stream"},
        {"topDescriptorHex", encode_hex(intent.top_descriptor)},
        {"base", intent.base},
        {"top", intent.top},
        {"deltas", intent.deltas},
        {"removeFiles", intent.remove_files},
        {"branchFiles", intent.branch_files},
        {"vmxFiles", intent.vmx_files},
        {"oldCid", intent.old_cid},
        {"newCid", intent.new_cid},
        {"sparseFileSizes", sizes},
    };
    replace_file_atomically(path, json.dump(2) + "\n");
}

}  // namespace vmcrypt::vmdk
