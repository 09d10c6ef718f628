#include "formats/qcow2/merge_intent.hpp"

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/vmx_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace vmcrypt::qcow2 {

namespace {

// Version 2 added branchFiles and growBaseTo. A version 1 file has neither; it is read as having none.
constexpr const char* schema = "vmcrypt-consolidate-qcow2/2";
constexpr const char* schema_v1 = "vmcrypt-consolidate-qcow2/1";
constexpr const char* link_schema = "vmcrypt-consolidate-qcow2-link/1";

}  // namespace

bool MergeIntent::mentions(const std::filesystem::path& path) const
{
    const std::string wanted = path.lexically_normal().string();
    return wanted == base || wanted == top || std::find(overlays.begin(), overlays.end(), wanted) != overlays.end() ||
           std::find(branch_files.begin(), branch_files.end(), wanted) != branch_files.end();
}

std::filesystem::path merge_intent_path(const std::filesystem::path& base)
{
    std::filesystem::path path = base;
    path += ".vmcrypt-consolidate-qcow2";
    return path;
}

std::optional<MergeIntent> read_merge_intent(const std::filesystem::path& path)
{
    std::error_code error;
    if (!std::filesystem::exists(path, error))
        return std::nullopt;
    const std::string text = read_small_file(path, 16 << 20);
    try {
        nlohmann::json json = nlohmann::json::parse(text);
        const std::string version = json.at("schema").get<std::string>();
        if (version != schema && version != schema_v1)
            throw InvalidInput(path.string() + ": schema: \"" + json.at("schema").get<std::string>() + "\" is not " +
                               schema + "; finish the merge with the vmcrypt version that started it");
        MergeIntent intent;
        const std::string phase = json.at("phase").get<std::string>();
        if (phase == "copy")
            intent.phase = MergePhase::copy;
        else if (phase == "switch")
            intent.phase = MergePhase::switch_files;
        else
            throw InvalidInput(path.string() + ": phase: \"" + phase + "\" is neither \"copy\" nor \"switch\"");
        const std::string strategy = json.at("strategy").get<std::string>();
        if (strategy == "commit")
            intent.strategy = MergeStrategy::commit;
        else if (strategy == "stream")
            intent.strategy = MergeStrategy::stream;
        else
            throw InvalidInput(path.string() + ": strategy: \"" + strategy + "\" is neither \"commit\" nor \"stream\"");
        intent.base = json.at("base").get<std::string>();
        intent.base_format = json.at("baseFormat").get<std::string>();
        intent.top = json.at("top").get<std::string>();
        intent.overlays = json.at("overlays").get<std::vector<std::string>>();
        intent.remove_files = json.at("removeFiles").get<std::vector<std::string>>();
        if (version != schema_v1) {
            intent.branch_files = json.at("branchFiles").get<std::vector<std::string>>();
            intent.grow_base_to = json.at("growBaseTo").get<std::uint64_t>();
        }
        return intent;
    } catch (const nlohmann::json::exception& e) {
        throw InvalidInput(path.string() + ": the consolidation intent file is damaged (" + e.what() +
                           "); keep the image files as they are and restore the chain from a backup, or, if the "
                           "merge is known to have finished, remove the intent file");
    }
}

void write_merge_intent(const std::filesystem::path& path, const MergeIntent& intent)
{
    nlohmann::json json = {
        {"schema", schema},
        {"phase", intent.phase == MergePhase::copy ? "copy" : "switch"},
        {"strategy", intent.strategy == MergeStrategy::commit ? "commit" : "stream"},
        {"base", intent.base},
        {"baseFormat", intent.base_format},
        {"top", intent.top},
        {"overlays", intent.overlays},
        {"removeFiles", intent.remove_files},
        {"branchFiles", intent.branch_files},
        {"growBaseTo", intent.grow_base_to},
    };
    vmdk::replace_file_atomically(path, json.dump(2) + "\n");
}

std::filesystem::path merge_intent_link_path(const std::filesystem::path& overlay)
{
    std::filesystem::path path = overlay;
    path += merge_intent_link_extension;
    return path;
}

std::filesystem::path read_merge_intent_link(const std::filesystem::path& link)
{
    const std::string text = read_small_file(link, 1 << 20);
    try {
        nlohmann::json json = nlohmann::json::parse(text);
        if (json.at("schema").get<std::string>() != link_schema)
            throw InvalidInput(link.string() + ": schema: \"" + json.at("schema").get<std::string>() + "\" is not " +
                               link_schema + "; finish the merge with the vmcrypt version that started it");
        return json.at("intent").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
        throw InvalidInput(link.string() + ": the consolidation link file is damaged (" + e.what() +
                           "); run consolidate-snapshots on the base of the chain, or remove the link file if no "
                           "intent file of that merge is left");
    }
}

void write_merge_intent_link(const std::filesystem::path& link, const std::filesystem::path& intent_path)
{
    nlohmann::json json = {{"schema", link_schema}, {"intent", intent_path.string()}};
    vmdk::replace_file_atomically(link, json.dump(2) + "\n");
}

}  // namespace vmcrypt::qcow2
