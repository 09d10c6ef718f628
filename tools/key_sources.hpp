#pragma once
// Turning key options into key sources. encrypt: one source per key option (the key store when none
// is given). decrypt: the sources given, else the key store and, on a terminal, a passphrase prompt that
// asks only if a passphrase slot is tried.

#include "core/engine/operation.hpp"
#include "tools/cli_options.hpp"

#include <string>
#include <vector>

namespace vmcrypt::cli {

KeySources make_key_sources(const KeyOptions& options, Operation operation);

// The options of `options` that locate a key (file names, folders, descriptor numbers, KMS settings;
// never a secret), as words for the resume hints of core/engine/resume_hint.hpp.
std::vector<std::string> resume_key_arguments(const KeyOptions& options);

}  // namespace vmcrypt::cli
