// rekey and keys: key sources for the current and the new key, and the result summary.

#include "core/engine/resume_hint.hpp"
#include "core/engine/rekey.hpp"
#include "core/error.hpp"
#include "core/keys/key_store.hpp"
#include "core/log.hpp"
#include "core/record/encryption_record.hpp"
#include "formats/open_disk.hpp"
#include "tools/commands.hpp"
#include "tools/key_sources.hpp"
#include "tools/progress_reporter.hpp"
#include "tools/stop_signals.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace vmcrypt::cli {

namespace {

using nlohmann::json;

json slots_json(const std::vector<SlotDescription>& slots)
{
    json list = json::array();
    for (const SlotDescription& slot : slots) {
        json entry = {{"id", slot.id}, {"type", slot.type}};
        entry["kekId"] = slot.kek_id.empty() ? json(nullptr) : json(slot.kek_id);
        entry["created"] = slot.created.empty() ? json(nullptr) : json(slot.created);
        list.push_back(entry);
    }
    return list;
}

void print_json(const json& document)
{
    std::printf("%s\n", document.dump(2, ' ', false, json::error_handler_t::replace).c_str());
}

void print_slots(const char* heading, const std::vector<SlotDescription>& slots)
{
    for (const SlotDescription& slot : slots)
        std::printf("  %s %s\n", heading, slot.summary().c_str());
}

int report_key_change(const GlobalOptions& global, const std::string& command, const KeySlotReport& report,
                      double seconds)
{
    if (global.json) {
        print_json({{"schema", "vmcrypt-result/1"},
                    {"command", command},
                    {"disk", report.disk.string()},
                    {"state", "encrypted"},
                    {"finishedInterruptedChange", report.finished_interrupted},
                    {"addedSlots", slots_json(report.added)},
                    {"removedSlots", slots_json(report.removed)},
                    {"slots", slots_json(report.slots)},
                    {"seconds", seconds}});
        return 0;
    }
    if (global.quiet)
        return 0;
    if (report.finished_interrupted) {
        std::printf("%s: finished an interrupted key-slot change; nothing else was changed, so run the command "
                    "again if its change is still missing\n", report.disk.c_str());
    } else {
        std::printf("%s: %s done\n", report.disk.c_str(), command.c_str());
        print_slots("added  ", report.added);
        print_slots("removed", report.removed);
    }
    print_slots("key", report.slots);
    return 0;
}

int run_deep(const GlobalOptions& global, const RekeyCommandOptions& options, KeySources& unlock, KeySources& seal)
{
    install_stop_handlers();
    ProgressReporter reporter(progress_mode(global), options.disk);
    RewriteOptions rewrite;
    rewrite.window_size = options.window_mib.value_or(0) << 20;
    rewrite.stop_requested = &stop_flag();
    rewrite.on_progress = [&reporter](const Progress& p) { reporter.update(p); };

    auto started = std::chrono::steady_clock::now();
    log_info("rekey --deep " + options.disk + ": starting");
    OperationReport report = run_deep_rekey(options.disk, unlock, seal, rewrite, open_disk);
    reporter.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    log_info("rekey --deep " + options.disk + ": done, " + std::to_string(report.result.bytes_rewritten) +
             " bytes rewritten");

    if (global.json) {
        print_json({{"schema", "vmcrypt-result/1"},
                    {"command", "rekey"},
                    {"deep", true},
                    {"disk", options.disk},
                    {"state", "encrypted"},
                    {"bytesTotal", report.result.bytes_total},
                    {"bytesRewritten", report.result.bytes_rewritten},
                    {"resumed", report.result.resumed},
                    {"seconds", seconds},
                    {"keySlots", report.key_slots}});
    } else if (!global.quiet) {
        std::printf("%s: rekeyed under a new DEK (%s of data%s)\n", options.disk.c_str(),
                    format_bytes(report.result.bytes_total).c_str(), report.result.resumed ? ", resumed" : "");
        for (const std::string& slot : report.key_slots)
            std::printf("  key slot: %s\n", slot.c_str());
    }
    return 0;
}

// Returns the key options that a resumed deep rekey needs. These are the key that opens the disk and, when
// given, the new key with its --new- prefix, because a resume must seal under the same new key.
// The --new-* options of a rekey, as its resume hint repeats them.
std::vector<std::string> new_key_resume_arguments(const RekeyCommandOptions& options)
{
    if (!options.new_keys_given)
        return {};

    std::vector<std::string> new_words = resume_key_arguments(options.new_keys);
    auto add = [&new_words](const char* name, const std::optional<std::string>& value) {
        if (value) {
            new_words.emplace_back(name);
            new_words.push_back(*value);
        }
    };
    add("--kek-id", options.new_keys.kek_id);
    add("--kms-key", options.new_keys.kms_key);
    // Only option names get the prefix: a value such as a file name may itself start with "--".
    const std::set<std::string> names{"--key-file", "--passphrase-file", "--passphrase-fd", "--passphrase",
                                      "--keystore", "--kms-config", "--kms-provider", "--kek-id", "--kms-key"};
    bool expecting_value = false;
    for (std::string& word : new_words) {
        if (!expecting_value && names.count(word)) {
            expecting_value = word != "--passphrase";
            word = "--new-" + word.substr(2);
        } else {
            expecting_value = false;
        }
    }
    return new_words;
}

}  // namespace

int run_rekey(const GlobalOptions& global, const RekeyCommandOptions& options)
{
    KeySources unlock = make_key_sources(options.keys, Operation::decrypt);
    set_resume_key_arguments(options.deep ? Operation::rekey : Operation::key_change,
                             resume_key_arguments(options.keys), new_key_resume_arguments(options));
    // Without --new-* options a deep rekey keeps the KEKs, and a shallow one creates a key store KEK.
    KeySources seal;
    if (options.new_keys_given || !options.deep)
        seal = make_key_sources(options.new_keys, Operation::encrypt);

    if (options.deep) {
        // Every slot is resealed by the key that opens it, so the default key store is tried too when
        // other key options are given: it opens the key store slots without a --keystore option.
        bool has_key_store = false;
        for (const auto& source : unlock)
            has_key_store = has_key_store || source->slot_type() == "keystore";
        if (!has_key_store)
            unlock.push_back(std::make_unique<KeyStoreSource>(default_key_store_path(), std::nullopt));
        return run_deep(global, options, unlock, seal);
    }

    auto started = std::chrono::steady_clock::now();
    KeySlotRequest request;
    request.change = options.keep_old_slot ? SlotChange::add : SlotChange::replace;
    KeySlotReport report = change_key_slots(options.disk, unlock, seal, request, open_disk);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return report_key_change(global, "rekey", report, seconds);
}

int run_keys_add(const GlobalOptions& global, const KeysCommandOptions& options)
{
    KeySources unlock = make_key_sources(options.keys, Operation::decrypt);
    set_resume_key_arguments(Operation::key_change, resume_key_arguments(options.keys));
    KeySources seal = make_key_sources(options.new_keys, Operation::encrypt);
    auto started = std::chrono::steady_clock::now();
    KeySlotRequest request;
    request.change = SlotChange::add;
    KeySlotReport report = change_key_slots(options.disk, unlock, seal, request, open_disk);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return report_key_change(global, "keys add", report, seconds);
}

int run_keys_remove(const GlobalOptions& global, const KeysCommandOptions& options)
{
    KeySources unlock = make_key_sources(options.keys, Operation::decrypt);
    set_resume_key_arguments(Operation::key_change, resume_key_arguments(options.keys));
    KeySources seal;
    auto started = std::chrono::steady_clock::now();
    KeySlotRequest request;
    request.change = SlotChange::remove;
    request.slot_id = options.slot;
    KeySlotReport report = change_key_slots(options.disk, unlock, seal, request, open_disk);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return report_key_change(global, "keys remove", report, seconds);
}

int run_keys_list(const GlobalOptions& global, const std::string& disk_path)
{
    std::error_code ec;
    if (!std::filesystem::exists(disk_path, ec))
        throw InvalidInput(disk_path + ": file not found; check the path of the disk");
    // Read-only like inspect: no lock, no write, no key.
    std::unique_ptr<Disk> disk = open_disk(std::filesystem::weakly_canonical(disk_path), Access::read_only);
    std::optional<RecordFields> fields = disk->record();
    if (!fields)
        throw WrongDiskState(disk_path + ": the disk is not encrypted by vmcrypt (no ddb.vmcrypt record), so it has "
                             "no key slots");
    std::vector<SlotDescription> slots = describe_slots(EncryptionRecord::from_fields(*fields, disk_path));

    if (global.json)
        print_json({{"schema", "vmcrypt-keys/1"}, {"disk", disk_path}, {"slots", slots_json(slots)}});
    else if (!global.quiet)
        for (const SlotDescription& slot : slots)
            std::printf("%s\n", slot.summary().c_str());
    return 0;
}

}  // namespace vmcrypt::cli
