#pragma once
// Parsing of KEK files: 32 raw bytes, or 64 hex digits with an optional trailing newline.

#include "core/crypto/secure.hpp"

#include <string>

namespace vmcrypt {

// Throws KeyUnavailable naming `where` when the content is neither form. The text is not echoed.
SecureBytes parse_kek_text(const std::string& content, const std::string& where);

// A short public identifier of a KEK: the first 8 bytes of HMAC-SHA-256(KEK, "vmcrypt kek id v1") in
// hex. It lets vmcrypt say "this key file is not the one for this disk" and reveals nothing useful.
std::string kek_fingerprint(const SecureBytes& kek);

}  // namespace vmcrypt
