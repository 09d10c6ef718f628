#pragma once
// The subcommands. Each returns the process exit code on success and throws vmcrypt::Error on failure.

#include "tools/cli_options.hpp"


namespace vmcrypt::cli {

int run_encrypt(const GlobalOptions& global, const RewriteCommandOptions& options);
int run_decrypt(const GlobalOptions& global, const RewriteCommandOptions& options);
int run_inspect(const GlobalOptions& global, const std::string& disk);
int run_qemu_secret(const GlobalOptions& global, const QemuSecretCommandOptions& options);
int run_consolidate(const GlobalOptions& global, const ConsolidateCommandOptions& options);
int run_kms_check(const GlobalOptions& global, const KmsCheckOptions& options);
int run_rekey(const GlobalOptions& global, const RekeyCommandOptions& options);
int run_keys_list(const GlobalOptions& global, const std::string& disk);
int run_keys_add(const GlobalOptions& global, const KeysCommandOptions& options);
int run_keys_remove(const GlobalOptions& global, const KeysCommandOptions& options);

}  // namespace vmcrypt::cli
