// inspect: a read-only report. Every file is opened O_RDONLY; nothing is created, written or locked.

#include "core/engine/journal.hpp"
#include "core/engine/operation_steps.hpp"
#include "core/error.hpp"
#include "core/io/locks.hpp"
#include "core/record/encryption_record.hpp"
#include "formats/open_disk.hpp"
#include "formats/qcow2/consolidate.hpp"
#include "formats/qcow2/inspect_report.hpp"
#include "formats/vmdk/consolidate_intent.hpp"
#include "core/text/shell_words.hpp"
#include "core/text/terminal_text.hpp"
#include "tools/commands.hpp"
#include "tools/progress_reporter.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

namespace vmcrypt::cli {

namespace {

using nlohmann::json;

json describe_encryption(Disk& disk, const std::string& where)
{
    if (auto foreign = disk.foreign_encryption())
        return {{"state", "encrypted"}, {"by", disk.format() == "qcow2" ? "qemu" : "vmware"}, {"detail", *foreign}};

    std::optional<RecordFields> fields = disk.record();
    if (!fields)
        return {{"state", "plaintext"}};

    json result = {{"by", "vmcrypt"}};
    try {
        EncryptionRecord record = EncryptionRecord::from_fields(*fields, where);
        result["state"] = to_string(record.state);
        result["cipher"] = record.cipher;
        result["unitSize"] = record.unit_size;
        result["tweak"] = record.tweak;
        result["zeroUnits"] = record.zero_units;
        result["recordMac"] = "not verified (needs the key)";
        json slots = json::array();
        const std::vector<std::uint32_t> ids = record.slot_ids();
        for (std::size_t i = 0; i < record.key_slots.size(); ++i) {
            const KeySlot& slot = record.key_slots[i];
            // "index" is the slot's id (ddb.vmcrypt.keySlot.<id>); ids keep their gaps after a removal.
            json entry = {{"index", ids[i]}, {"type", slot.type}};
            for (const auto& [name, value] : slot.params)
                entry[name == "kek" ? "kekId" : name] = value;
            slots.push_back(entry);
        }
        result["keySlots"] = slots;
    } catch (const Error& e) {
        result["state"] = "invalid";
        result["error"] = e.what();
    }
    return result;
}

// The unfinished consolidate-snapshots merge into the disk, or null.
json describe_merge(const std::filesystem::path& disk, const std::string& disk_path)
{
    std::optional<std::filesystem::path> intent_path = find_unfinished_merge(disk);
    if (!intent_path)
        return nullptr;
    json merge = {{"intent", intent_path->string()},
                  {"command", shell_command({"vmcrypt", "consolidate-snapshots", disk_path})}};
    try {
        std::optional<vmdk::ConsolidateIntent> intent = vmdk::read_consolidate_intent(*intent_path);
        if (!intent)
            return nullptr;  // removed since the check: the merge has just finished
        merge["phase"] = intent->phase == vmdk::ConsolidatePhase::copy ? "copy" : "switch";
        merge["top"] = intent->top;
    } catch (const Error& e) {
        merge["error"] = e.what();
    }
    return merge;
}

// The unfinished qcow2 merge that the image belongs to (as its base, top, an overlay or an image of
// another branch that the merge removes), or null. The intent file names the base, and the command
// resumes the merge from it.
json describe_qcow2_merge(const std::filesystem::path& disk, const std::string& disk_path)
{
    std::optional<qcow2::UnfinishedMerge> found;
    try {
        found = qcow2::find_unfinished_qcow2_merge(disk);
    } catch (const Error& e) {
        // A damaged intent file: the message names it.
        return {{"command", shell_command({"vmcrypt", "consolidate-snapshots", disk_path})}, {"error", e.what()}};
    }
    if (!found)
        return nullptr;
    return {{"intent", found->intent_path.string()},
            {"command", shell_command({"vmcrypt", "consolidate-snapshots", found->base})},
            {"phase", found->phase},
            {"strategy", found->strategy},
            {"base", found->base},
            {"top", found->top}};
}

json describe_operation(const std::filesystem::path& metadata_file)
{
    std::filesystem::path journal_path = Journal::path_for(metadata_file);
    std::optional<JournalSummary> summary;
    try {
        summary = Journal::peek(journal_path);
    } catch (const Error& e) {
        return {{"journal", journal_path.string()}, {"error", e.what()}};
    }
    if (!summary)
        return nullptr;

    std::uint64_t done = 0;
    std::string phase = "unknown";
    if (summary->newest) {
        phase = to_string(summary->newest->phase);
        switch (summary->newest->phase) {
        case JournalPhase::metadata:
            done = 0;
            break;
        case JournalPhase::window:
            // The window before the newest entry's may still be partly written (see run_step), so only
            // the windows before that one are known to be done.
            done = summary->newest->window_start - std::min(summary->newest->window_start, summary->header.window_size);
            break;
        case JournalPhase::finalize:
            done = summary->header.total_bytes;
            break;
        }
    }
    json operation = {{"operation", to_string(summary->header.operation)},
                      {"phase", phase},
                      {"bytesDone", done},
                      {"bytesTotal", summary->header.total_bytes},
                      {"windowSize", summary->header.window_size},
                      {"journal", journal_path.string()},
                      {"authenticated", false}};
    if (!summary->damage.empty())
        operation["damaged"] = summary->damage;
    return operation;
}

std::string join_names(const json& names)
{
    std::string text;
    for (const json& name : names)
        text += (text.empty() ? "" : ", ") + name.get<std::string>();
    return text.empty() ? std::string("none") : text;
}

void print_qcow2(const json& image)
{
    std::printf("qcow2:      version %u, %s clusters, %u-bit refcounts, %s compression%s\n",
                image["version"].get<unsigned>(), format_bytes(image["clusterSize"]).c_str(),
                image["refcountBits"].get<unsigned>(), image["compressionType"].get<std::string>().c_str(),
                image["extendedL2"].get<bool>() ? ", extended L2 (subclusters)" : "");
    const json& features = image["features"];
    std::printf("  features: incompatible: %s; compatible: %s; autoclear: %s\n",
                join_names(features["incompatible"]).c_str(), join_names(features["compatible"]).c_str(),
                join_names(features["autoclear"]).c_str());
    const json& allocation = image["allocation"];
    std::printf("  allocation: %llu data clusters (%s), %llu zero clusters, %llu compressed clusters (%s stored)\n",
                static_cast<unsigned long long>(allocation["dataClusters"].get<std::uint64_t>()),
                format_bytes(allocation["dataBytes"]).c_str(),
                static_cast<unsigned long long>(allocation["zeroClusters"].get<std::uint64_t>()),
                static_cast<unsigned long long>(allocation["compressedClusters"].get<std::uint64_t>()),
                format_bytes(allocation["compressedBytes"]).c_str());
    std::printf("  snapshots: %zu", image["snapshots"].size());
    for (const json& snapshot : image["snapshots"])
        std::printf(" [%s \"%s\"]", snapshot["id"].get<std::string>().c_str(), snapshot["name"].get<std::string>().c_str());
    std::printf("\n");
    if (!image["backingFile"].is_null())
        std::printf("  backing file: %s (format %s)\n", image["backingFile"].get<std::string>().c_str(),
                    image["backingFormat"].is_null() ? "not recorded" : image["backingFormat"].get<std::string>().c_str());
    if (!image["dataFile"].is_null())
        std::printf("  external data file: %s\n", image["dataFile"].get<std::string>().c_str());
    std::printf("  crypt method: %u (%s)%s\n", image["cryptMethod"].get<unsigned>(),
                image["encryption"].get<std::string>().c_str(), image["insecure"].get<bool>() ? ", INSECURE" : "");
    if (image["insecure"].get<bool>()) {
        std::printf("    why: %s\n", image["insecureReason"].get<std::string>().c_str());
        std::printf("    fix: %s\n", image["recommendation"].get<std::string>().c_str());
    }
}

// The report with every string made one printable line (see terminal_line()), so that a file name
// with a line break cannot split a line of the text report. The JSON report keeps the raw strings.
json printable(const json& value)
{
    if (value.is_string())
        return terminal_line(value.get<std::string>());
    json result = value;
    if (value.is_object() || value.is_array())
        for (auto it = result.begin(); it != result.end(); ++it)
            *it = printable(*it);
    return result;
}

void print_text(const json& report)
{
    std::printf("disk:       %s\n", report["disk"].get<std::string>().c_str());
    std::printf("format:     %s (%s)\n", report["format"].get<std::string>().c_str(),
                report["createType"].get<std::string>().c_str());
    std::printf("capacity:   %s (%llu bytes)\n", format_bytes(report["capacity"]).c_str(),
                static_cast<unsigned long long>(report["capacity"].get<std::uint64_t>()));
    std::printf("extents:\n");
    for (const json& extent : report["extents"])
        std::printf("  %-6s %-6s %s: guest offset %llu, %s, file %s, allocated %s\n",
                    extent["access"].get<std::string>().c_str(), extent["type"].get<std::string>().c_str(),
                    extent["file"].get<std::string>().empty() ? "(no file)" : extent["file"].get<std::string>().c_str(),
                    static_cast<unsigned long long>(extent["guestOffset"].get<std::uint64_t>()),
                    format_bytes(extent["size"]).c_str(), format_bytes(extent["fileSize"]).c_str(),
                    format_bytes(extent["allocated"]).c_str());

    auto list = [](const json& items) {
        std::string text;
        for (const json& item : items)
            text += (text.empty() ? "" : ", ") + item.get<std::string>();
        return text.empty() ? std::string("none") : text;
    };
    if (report.contains("qcow2"))
        print_qcow2(report["qcow2"]);
    std::printf("parents:    %s\n", list(report["parents"]).c_str());
    std::printf("children:   %s\n", list(report["children"]).c_str());

    const json& encryption = report["encryption"];
    std::string state = encryption["state"];
    if (encryption.contains("by") && encryption["by"] != "vmcrypt") {
        std::printf("encryption: encrypted by %s\n", encryption["detail"].get<std::string>().c_str());
    } else if (state == "plaintext") {
        std::printf("encryption: none (plaintext)\n");
    } else if (state == "invalid") {
        std::printf("encryption: vmcrypt record is invalid: %s\n", encryption["error"].get<std::string>().c_str());
    } else {
        std::printf("encryption: vmcrypt, %s\n", state.c_str());
        std::printf("  cipher:   %s, %u-byte units, tweak %s, %s\n",
                    encryption["cipher"].get<std::string>().c_str(), encryption["unitSize"].get<unsigned>(),
                    encryption["tweak"].get<std::string>().c_str(),
                    encryption["zeroUnits"] == "plain" ? "zero units stored as zeros" : "zero units encrypted");
        for (const json& slot : encryption["keySlots"]) {
            std::string detail;
            for (auto it = slot.begin(); it != slot.end(); ++it)
                if (it.key() != "index" && it.key() != "type" && it.key() != "salt")
                    detail += " " + it.key() + "=" + (it->is_string() ? it->get<std::string>() : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
            std::printf("  key slot %d: %s%s\n", slot["index"].get<int>(), slot["type"].get<std::string>().c_str(),
                        detail.c_str());
        }
    }

    const json& operation = report["unfinishedOperation"];
    if (!operation.is_null()) {
        if (operation.contains("error"))
            std::printf("unfinished: journal %s is unreadable: %s\n", operation["journal"].get<std::string>().c_str(),
                        operation["error"].get<std::string>().c_str());
        else if (operation.contains("damaged"))
            std::printf("unfinished: %s, journal %s is damaged (%s), so the operation cannot be resumed and the "
                        "disk may be partly rewritten; keep both as they are and restore the disk from a backup\n",
                        operation["operation"].get<std::string>().c_str(),
                        operation["journal"].get<std::string>().c_str(), operation["damaged"].get<std::string>().c_str());
        else
            std::printf("unfinished: %s, %s of %s done (journal %s); %s\n",
                        operation["operation"].get<std::string>().c_str(), format_bytes(operation["bytesDone"]).c_str(),
                        format_bytes(operation["bytesTotal"]).c_str(), operation["journal"].get<std::string>().c_str(),
                        report["inUse"].is_null() ? "run the same command to resume"
                                                  : "another process holds the disk and may be running it");
    }
    const json& merge = report["unfinishedMerge"];
    if (!merge.is_null()) {
        if (merge.contains("error") && !merge.contains("intent"))
            std::printf("unfinished: consolidate-snapshots merge, an intent file is unreadable: %s\n",
                        merge["error"].get<std::string>().c_str());
        else if (merge.contains("error"))
            std::printf("unfinished: consolidate-snapshots merge, intent file %s is unreadable: %s\n",
                        merge["intent"].get<std::string>().c_str(), merge["error"].get<std::string>().c_str());
        else if (merge.contains("base"))
            std::printf("unfinished: consolidate-snapshots merge of %s into %s (%s), phase %s (intent file %s); "
                        "finish it with: %s\n",
                        merge["top"].get<std::string>().c_str(), merge["base"].get<std::string>().c_str(),
                        merge["strategy"].get<std::string>().c_str(), merge["phase"].get<std::string>().c_str(),
                        merge["intent"].get<std::string>().c_str(), merge["command"].get<std::string>().c_str());
        else
            std::printf("unfinished: consolidate-snapshots merge of %s into this disk, phase %s (intent file %s); "
                        "finish it with: %s\n",
                        merge["top"].get<std::string>().c_str(), merge["phase"].get<std::string>().c_str(),
                        merge["intent"].get<std::string>().c_str(), merge["command"].get<std::string>().c_str());
    }
    std::printf("in use:     %s\n", report["inUse"].is_null() ? "no" : report["inUse"].get<std::string>().c_str());
}

}  // namespace

int run_inspect(const GlobalOptions& global, const std::string& disk_path)
{
    std::error_code ec;
    if (!std::filesystem::exists(disk_path, ec))
        throw InvalidInput(disk_path + ": file not found; check the path of the disk");
    std::filesystem::path path = std::filesystem::weakly_canonical(disk_path);
    std::unique_ptr<Disk> disk = open_disk(path, Access::read_only);

    json extents = json::array();
    for (const ExtentInfo& extent : disk->extents())
        extents.push_back({{"file", extent.file},
                           {"type", extent.type},
                           {"access", extent.access},
                           {"guestOffset", extent.guest_offset},
                           {"size", extent.size},
                           {"fileSize", extent.file_size},
                           {"allocated", extent.allocated}});

    json in_use = nullptr;
    for (File* file : disk->files()) {
        if (auto holder = find_lock_holder(*file)) {
            in_use = file->path().filename().string() + ": " + *holder;
            break;
        }
        if (auto folder = find_vmware_lock(file->path())) {
            in_use = "VMware lock folder " + folder->string();
            break;
        }
    }

    DiskRelations relations = disk->relations();
    json report = {{"schema", "vmcrypt-inspect/1"},
                   {"disk", disk_path},
                   {"format", disk->format()},
                   {"createType", disk->subformat()},
                   {"capacity", disk->capacity()},
                   {"extents", extents},
                   {"parents", relations.parents},
                   {"children", relations.children},
                   {"encryption", describe_encryption(*disk, disk_path)},
                   {"unfinishedOperation", describe_operation(disk->files().front()->path())},
                   {"unfinishedMerge", disk->format() == "qcow2" ? describe_qcow2_merge(path, disk_path)
                                                                 : describe_merge(path, disk_path)},
                   {"inUse", in_use}};
    if (const auto* image = dynamic_cast<const qcow2::QcowDisk*>(disk.get()))
        report["qcow2"] = qcow2::describe_image(*image, disk_path);

    if (global.json)
        std::printf("%s\n", report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    else if (!global.quiet)
        print_text(printable(report));
    return 0;
}

}  // namespace vmcrypt::cli
