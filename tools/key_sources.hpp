#pragma once
// Turning key options into key sources. encrypt: one source per key option (the key store when none
// is given). decrypt: the sources given, else the key store and, on a terminal, a passphrase prompt that
// asks only if a passphrase slot is tried.

#include "core/engine/operation.hpp"
#include "tools/cli_options.hpp"

namespace vmcrypt::cli {

KeySources make_key_sources(const KeyOptions& options, Operation operation);

}  // namespace vmcrypt::cli
