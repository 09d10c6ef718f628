#pragma once
// A key slot: one way to unlock the DEK, stored in the encryption record as one text value
// "type=keystore;kek=<uuid>;wrap=aes-kw;dek=<base64>" (parameters separated by ';').

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vmcrypt {

struct KeySlot {
    std::string type;                           // keystore, key-file, passphrase (kmip later)
    std::map<std::string, std::string> params;  // kek, kdf, m, t, p, salt, ... (no secrets)
    std::vector<std::uint8_t> wrapped_dek;      // RFC 3394 output, 72 bytes for a 64-byte DEK

    std::string to_text() const;
    // Parses a slot value; `where` names the field for errors ("disk.vmdk: ddb.vmcrypt.keySlot.0").
    static KeySlot parse(const std::string& text, const std::string& where);

    // The parameter, or throws InvalidInput naming it.
    const std::string& param(const std::string& name, const std::string& where) const;
};

}  // namespace vmcrypt
