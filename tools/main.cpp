// vmcrypt: command-line wiring. Parses options with CLI11, sets up the process (no core dumps, signal
// handling), runs one subcommand and turns its exception into one line on stderr and an exit code.

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/text/terminal_text.hpp"
#include "tools/commands.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>
#include <sys/prctl.h>
#include <sys/resource.h>

#ifndef VMCRYPT_VERSION
#define VMCRYPT_VERSION "0.1.0"
#endif

namespace {

// Keys live in this process's memory: keep them out of core dumps and away from ptrace by the same user.
void protect_process()
{
    struct rlimit none {0, 0};
    ::setrlimit(RLIMIT_CORE, &none);
    ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    // A closed progress or output pipe must not kill a rewrite mid-window; writes to it just fail.
    ::signal(SIGPIPE, SIG_IGN);
}

// Adds the key options of one key to `command`. `prefix` goes before every option name, so that rekey
// and keys take the new key as --new-key-file, --new-keystore, ... from this same builder: name every
// option through option_name() and its help through help().
void add_key_options(CLI::App& command, vmcrypt::cli::KeyOptions& keys, bool encrypting,
                     const std::string& prefix = "")
{
    auto option_name = [&](const std::string& name) { return "--" + prefix + name; };
    auto help = [&](const std::string& text) { return prefix.empty() ? text : "new key: " + text; };

    auto* key_file = command.add_option(option_name("key-file"), keys.key_file,
                                        help("KEK file: 32 raw bytes or 64 hex digits"));
    auto* passphrase_file = command.add_option(option_name("passphrase-file"), keys.passphrase_file,
                                               help("read the passphrase from FILE (one trailing newline is dropped)"));
    auto* passphrase_fd = command.add_option(option_name("passphrase-fd"), keys.passphrase_fd,
                                             help("read the passphrase from file descriptor N until end of file"));
    auto* prompt = command.add_flag(option_name("passphrase"), keys.passphrase_prompt,
                                    help(encrypting ? "ask for a passphrase on the terminal (twice)"
                                                    : "ask for the passphrase on the terminal"));
    passphrase_file->excludes(passphrase_fd)->excludes(prompt);
    passphrase_fd->excludes(prompt);
    (void)key_file;

    command.add_option(option_name("keystore"), keys.keystore,
                       help("key store directory (default: $VMCRYPT_KEYSTORE, else $XDG_DATA_HOME/vmcrypt/keys, "
                            "else ~/.local/share/vmcrypt/keys)"));
    auto* kms_config = command.add_option(option_name("kms-config"), keys.kms_config,
                                          help("KMS configuration file (default: $VMCRYPT_KMS_CONFIG, else "
                                               "$XDG_CONFIG_HOME/vmcrypt/kms.json)"));
    if (encrypting) {
        auto* kms_provider = command.add_option(option_name("kms-provider"), keys.kms_provider,
                                                help("seal with a new KEK created on this KMS provider (an id of the "
                                                     "KMS configuration)"));
        command.add_option(option_name("kms-key"), keys.kms_key,
                           help("seal with this existing, Active KMS key (its Unique Identifier) instead of "
                                "creating one"))
            ->needs(kms_provider);
        kms_config->needs(kms_provider);
    }
    if (encrypting) {
        command.add_option(option_name("kek-id"), keys.kek_id,
                           help("seal with this existing KEK (UUID) of the key store instead of creating a new one"));
        command.add_option(option_name("pbkdf-memory"), keys.pbkdf_memory_kib,
                           help("Argon2id memory cost in KiB (default 65536)"))
            ->check(CLI::Range(8u, 4u * 1024 * 1024));
        command.add_option(option_name("pbkdf-iterations"), keys.pbkdf_iterations,
                           help("Argon2id time cost (default 3)"))
            ->check(CLI::Range(1u, 1000u));
        command.add_option(option_name("pbkdf-parallel"), keys.pbkdf_parallel, help("Argon2id lanes (default 1)"))
            ->check(CLI::Range(1u, 64u));
    }
}

// True when any option whose long name starts with PREFIX (without the dashes) was given.
bool any_option_given(const CLI::App& command, const std::string& prefix)
{
    for (const CLI::Option* option : command.get_options())
        for (const std::string& name : option->get_lnames())
            if (name.rfind(prefix, 0) == 0 && option->count() > 0)
                return true;
    return false;
}

void add_global_options(CLI::App& app, vmcrypt::cli::GlobalOptions& global)
{
    app.add_flag("--json", global.json, "print the result as JSON on stdout (versioned schema, see vmcrypt(1))");
    auto* quiet = app.add_flag("-q,--quiet", global.quiet, "print nothing but errors");
    auto* verbose = app.add_flag("-v,--verbose", global.verbose, "log progress details to stderr (-vv: debug)");
    quiet->excludes(verbose);
    app.add_option("--progress", global.progress,
                   "progress on stderr: auto (a line on a terminal), bar, json (JSON lines), none")
        ->check(CLI::IsMember({"auto", "bar", "json", "none"}));
}

int report_error(const vmcrypt::cli::GlobalOptions& global, int code, const std::string& message)
{
    std::fprintf(stderr, "vmcrypt: %s\n", vmcrypt::terminal_line(message).c_str());
    if (global.json) {
        nlohmann::json error = {{"schema", "vmcrypt-error/1"}, {"exitCode", code}, {"error", vmcrypt::terminal_line(message)}};
        std::printf("%s\n", error.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return code;
}

// CLI11 reports a mistyped command as a missing one; name the word it did not know instead.
std::optional<std::string> unknown_command(CLI::App& app, int argc, char** argv)
{
    std::vector<std::string> names;
    for (const CLI::App* command : app.get_subcommands({}))
        names.push_back(command->get_name());

    for (int i = 1; i < argc; ++i) {
        std::string word = argv[i];
        if (word == "--progress") {  // the one global option that takes a separate value
            ++i;
            continue;
        }
        if (word.empty() || word[0] == '-')
            continue;
        if (std::find(names.begin(), names.end(), word) != names.end())
            return std::nullopt;
        std::string list;
        for (const std::string& name : names)
            list += (list.empty() ? "" : ", ") + name;
        return "unknown command \"" + word + "\"; the commands are " + list + " (see vmcrypt --help)";
    }
    return std::nullopt;
}

}  // namespace

int main(int argc, char** argv)
{
    protect_process();

    vmcrypt::cli::GlobalOptions global;
    vmcrypt::cli::RewriteCommandOptions encrypt_options;
    vmcrypt::cli::RewriteCommandOptions decrypt_options;
    vmcrypt::cli::RekeyCommandOptions rekey_options;
    vmcrypt::cli::KeysCommandOptions keys_options;
    std::string inspect_disk;

    // CLI::Range's message gives no unit.
    const CLI::Validator window_mib_range(
        [](std::string& value) {
            unsigned long mib = 0;
            const bool valid = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos &&
                               value.size() <= 4 && (mib = std::stoul(value)) >= 1 && mib <= 1024;
            return valid ? std::string() : "expected a whole number of MiB from 1 to 1024, got \"" + value + "\"";
        },
        "1 to 1024 MiB");
    CLI::App app{"vmcrypt: encrypt VMDK and qcow2 disks offline and in place with AES-256-XTS", "vmcrypt"};
    app.set_version_flag("--version", "vmcrypt " VMCRYPT_VERSION);
    app.require_subcommand(1, 1);
    add_global_options(app, global);

    const char* disk_help = "the disk: a .vmdk descriptor, a monolithic sparse .vmdk or a qcow2 image";

    CLI::App* encrypt = app.add_subcommand("encrypt", "encrypt a plaintext disk in place (re-run to resume)");
    encrypt->add_option("DISK", encrypt_options.disk, disk_help)
        ->required();
    add_key_options(*encrypt, encrypt_options.keys, true);
    encrypt->add_option("--window-size", encrypt_options.window_mib,
                        "MiB rewritten per crash-safe step (default 4 on tmpfs, else 16)")->check(window_mib_range);

    CLI::App* decrypt = app.add_subcommand("decrypt", "decrypt an encrypted disk in place (re-run to resume)");
    decrypt->add_option("DISK", decrypt_options.disk, disk_help)
        ->required();
    add_key_options(*decrypt, decrypt_options.keys, false);
    decrypt->add_option("--window-size", decrypt_options.window_mib,
                        "MiB rewritten per crash-safe step (default 4 on tmpfs, else 16)")->check(window_mib_range);
    decrypt->add_flag("--skip-data-check", decrypt_options.skip_data_check,
                      "decrypt even when the record's dataCheck does not match the data (a program wrote to the "
                      "encrypted disk); the key must still open the record");

    CLI::App* rekey = app.add_subcommand("rekey", "seal the disk's DEK under a new key (shallow), or rewrite the "
                                                  "data under a new DEK with --deep (re-run to resume)");
    rekey->add_option("DISK", rekey_options.disk, disk_help)->required();
    add_key_options(*rekey, rekey_options.keys, false);
    add_key_options(*rekey, rekey_options.new_keys, true, "new-");
    auto* deep = rekey->add_flag("--deep", rekey_options.deep,
                                 "also replace the DEK: rewrite every allocated unit under a new DEK");
    rekey->add_flag("--keep-old-slot", rekey_options.keep_old_slot,
                    "keep the slot of the current key, so that both keys open the disk")->excludes(deep);
    rekey->add_option("--window-size", rekey_options.window_mib,
                      "MiB rewritten per crash-safe step with --deep (default 4 on tmpfs, else 16)")->check(window_mib_range);

    CLI::App* keys = app.add_subcommand("keys", "list, add or remove the key slots of an encrypted disk");
    keys->require_subcommand(1, 1);
    CLI::App* keys_list = keys->add_subcommand("list", "list the key slots (reads only, needs no key)");
    keys_list->add_option("DISK", keys_options.disk, disk_help)
        ->required();
    CLI::App* keys_add = keys->add_subcommand("add", "add a key slot for the key given with the --new-* options");
    keys_add->add_option("DISK", keys_options.disk, disk_help)
        ->required();
    add_key_options(*keys_add, keys_options.keys, false);
    add_key_options(*keys_add, keys_options.new_keys, true, "new-");
    CLI::App* keys_remove = keys->add_subcommand("remove", "remove a key slot (a given key must open the disk)");
    keys_remove->add_option("DISK", keys_options.disk, disk_help)
        ->required();
    add_key_options(*keys_remove, keys_options.keys, false);
    keys_remove->add_option("--slot", keys_options.slot, "id of the key slot to remove (see vmcrypt keys list)")
        ->required();

    CLI::App* inspect = app.add_subcommand("inspect", "show a disk's format, extents, relations and encryption "
                                                      "without writing anything");
    inspect->add_option("DISK", inspect_disk, disk_help)->required();

    vmcrypt::cli::ConsolidateCommandOptions consolidate_options;
    CLI::App* consolidate = app.add_subcommand("consolidate-snapshots",
                                               "merge a disk's snapshot chain into its base disk (re-run to resume)");
    consolidate->add_option("DISK", consolidate_options.disk, "any disk of the chain, usually the newest snapshot")
        ->required();
    consolidate->add_flag("--delete-other-branches", consolidate_options.delete_other_branches,
                          "when the chain branches, keep DISK's branch and delete the files of the others");
    consolidate->add_flag("-n,--dry-run", consolidate_options.dry_run,
                          "print the plan (files, bytes to copy, files to remove) and change nothing");

    CLI::App* kms = app.add_subcommand("kms", "administer KMS key providers");
    kms->require_subcommand(1);
    vmcrypt::cli::KmsCheckOptions kms_check_options;
    CLI::App* kms_check = kms->add_subcommand("check", "check every server of the KMS providers: certificate, "
                                                       "KMIP versions, and creating, getting and destroying a test key");
    kms_check->add_option("--provider", kms_check_options.provider, "check only this provider (an id of the KMS "
                                                                    "configuration)");
    kms_check->add_option("--kms-config", kms_check_options.kms_config,
                          "KMS configuration file (default: $VMCRYPT_KMS_CONFIG, else $XDG_CONFIG_HOME/vmcrypt/kms.json)");

    vmcrypt::cli::QemuSecretCommandOptions secret_options;
    CLI::App* qemu_secret = app.add_subcommand("qemu-secret", "print the LUKS secret with which QEMU and libvirt open "
                                                              "a qcow2 image that vmcrypt encrypted");
    qemu_secret->add_option("DISK", secret_options.disk, "the .qcow2 image")->required();
    add_key_options(*qemu_secret, secret_options.keys, false);
    qemu_secret->add_option("--form", secret_options.form,
                            "object: secret,id=ID,data=SECRET for --object (default); libvirt: the base64 value "
                            "for virsh secret-set-value; raw: the secret text")
        ->check(CLI::IsMember({"object", "libvirt", "raw"}));
    qemu_secret->add_option("--id", secret_options.id, "the QEMU object id in the object form (default sec0)");
    qemu_secret->add_option("-o,--output", secret_options.output,
                            "create FILE (mode 0600, never overwritten) holding the secret without a line end, "
                            "for secret,id=sec0,file=FILE; implies --form raw unless --form libvirt is given");

    for (CLI::App* command :
         {encrypt, decrypt, rekey, keys, keys_list, keys_add, keys_remove, inspect, consolidate, kms, kms_check,
          qemu_secret})
        command->fallthrough();

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        if (auto unknown = unknown_command(app, argc, argv))
            return report_error(global, static_cast<int>(vmcrypt::ExitCode::usage), *unknown);
        return report_error(global, static_cast<int>(vmcrypt::ExitCode::usage),
                            std::string(e.what()) + "; see vmcrypt --help");
    }

    if (global.verbose >= 2)
        vmcrypt::set_log_level(vmcrypt::LogLevel::debug);
    else if (global.verbose == 1)
        vmcrypt::set_log_level(vmcrypt::LogLevel::info);
    else if (global.quiet)
        vmcrypt::set_log_level(vmcrypt::LogLevel::error);

    try {
        if (encrypt->parsed())
            return vmcrypt::cli::run_encrypt(global, encrypt_options);
        if (decrypt->parsed())
            return vmcrypt::cli::run_decrypt(global, decrypt_options);
        if (qemu_secret->parsed())
            return vmcrypt::cli::run_qemu_secret(global, secret_options);
        if (consolidate->parsed())
            return vmcrypt::cli::run_consolidate(global, consolidate_options);
        if (kms_check->parsed())
            return vmcrypt::cli::run_kms_check(global, kms_check_options);
        if (rekey->parsed()) {
            rekey_options.new_keys_given = any_option_given(*rekey, "new-");
            return vmcrypt::cli::run_rekey(global, rekey_options);
        }
        if (keys_list->parsed())
            return vmcrypt::cli::run_keys_list(global, keys_options.disk);
        if (keys_add->parsed())
            return vmcrypt::cli::run_keys_add(global, keys_options);
        if (keys_remove->parsed())
            return vmcrypt::cli::run_keys_remove(global, keys_options);
        return vmcrypt::cli::run_inspect(global, inspect_disk);
    } catch (const vmcrypt::Error& e) {
        return report_error(global, static_cast<int>(e.code()), e.what());
    } catch (const std::filesystem::filesystem_error& e) {
        return report_error(global, static_cast<int>(vmcrypt::ExitCode::io_error), e.what());
    } catch (const std::exception& e) {
        return report_error(global, static_cast<int>(vmcrypt::ExitCode::failure),
                            std::string("internal error: ") + e.what() + "; please report this as a bug");
    }
}
