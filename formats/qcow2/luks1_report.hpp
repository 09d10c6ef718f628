#pragma once
// The LUKS1 header fields that `inspect` shows, as JSON. Salts and digests are not secret, but they are
// left out because they help no reader and make reports differ on every encrypt.

#include "formats/qcow2/luks1_header.hpp"

#include <nlohmann/json.hpp>

namespace vmcrypt::qcow2 {

// {"version", "cipher": "aes-xts-plain64", "hash", "keyBytes", "payloadOffset", "uuid",
//  "masterKeyDigestIterations", "keySlots": [{"slot", "enabled", "iterations", "keyMaterialOffset",
//  "stripes"}, ...]} with all 8 key slots. "iterations" is 0 for a disabled slot.
nlohmann::json luks_header_json(const LuksHeader& header);

}  // namespace vmcrypt::qcow2
