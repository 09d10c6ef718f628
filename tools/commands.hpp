#pragma once
// The subcommands. Each returns the process exit code on success and throws vmcrypt::Error on failure.

#include "tools/cli_options.hpp"


namespace vmcrypt::cli {

int run_encrypt(const GlobalOptions& global, const RewriteCommandOptions& options);
int run_decrypt(const GlobalOptions& global, const RewriteCommandOptions& options);
int run_inspect(const GlobalOptions& global, const std::string& disk);
int run_consolidate(const GlobalOptions& global, const ConsolidateCommandOptions& options);
int run_kms_check(const GlobalOptions& global, const KmsCheckOptions& options);

}  // namespace vmcrypt::cli
