#pragma once
// Parsed command-line options shared by the subcommands.

#include <cstdint>
#include <optional>
#include <string>

namespace vmcrypt::cli {

enum class ProgressMode { automatic, bar, json, none };

struct GlobalOptions {
    bool json = false;
    bool quiet = false;
    int verbose = 0;
    std::string progress = "auto";
};

struct KeyOptions {
    std::optional<std::string> key_file;
    std::optional<std::string> passphrase_file;
    std::optional<int> passphrase_fd;
    bool passphrase_prompt = false;
    std::optional<std::string> keystore;
    std::optional<std::string> kek_id;
    std::optional<std::string> kms_config;    // KMS configuration file (default: default_kms_config_path())
    std::optional<std::string> kms_provider;  // the KMS provider that keeps the new KEK
    std::optional<std::string> kms_key;       // an existing KMS key (Unique Identifier) instead of a new one
    std::uint32_t pbkdf_memory_kib = 65536;
    std::uint32_t pbkdf_iterations = 3;
    std::uint32_t pbkdf_parallel = 1;
};

struct RewriteCommandOptions {
    std::string disk;
    KeyOptions keys;
    std::optional<std::uint64_t> window_mib;  // unset: chosen by file system
    bool skip_data_check = false;  // decrypt only
};

struct QemuSecretCommandOptions {
    std::string disk;
    KeyOptions keys;
    std::string form;             // object, libvirt or raw; empty: object, or raw with --output
    std::string id = "sec0";      // QEMU object id for the object form
    std::string output;           // file to create (0600) for the secret instead of standard output
};

struct ConsolidateCommandOptions {
    std::string disk;
    bool delete_other_branches = false;
    bool dry_run = false;
};

struct KmsCheckOptions {
    std::optional<std::string> kms_config;
    std::optional<std::string> provider;  // every provider of the configuration when not given
};

struct RekeyCommandOptions {
    std::string disk;
    KeyOptions keys;              // the key that opens the disk now
    KeyOptions new_keys;          // --new-*: the key to seal under
    bool new_keys_given = false;  // any --new-* option was given
    bool deep = false;
    bool keep_old_slot = false;
    std::optional<std::uint64_t> window_mib;  // unset: chosen by file system
};

struct KeysCommandOptions {
    std::string disk;
    KeyOptions keys;      // the key that opens the disk now
    KeyOptions new_keys;  // keys add: --new-*
    std::uint32_t slot = 0;  // keys remove: --slot
};

ProgressMode progress_mode(const GlobalOptions& global);

}  // namespace vmcrypt::cli
