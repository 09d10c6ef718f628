#pragma once
// The secret in LUKS key slot 0 of a qcow2 that vmcrypt encrypted, and the forms in which QEMU and
// libvirt take it. The secret is derived from the DEK, so anyone who can unwrap the DEK from a vmcrypt
// key slot can print it, and no second secret needs storing.

#include "core/crypto/secure.hpp"

#include <string_view>

namespace vmcrypt::qcow2 {

// The HKDF-SHA-256 info label; changing it changes every secret, so it carries a version.
inline constexpr std::string_view qemu_secret_label = "vmcrypt qemu luks secret v1";

// HKDF-SHA-256(DEK, qemu_secret_label), 32 bytes, as 64 lowercase hex digits (ASCII). The text itself is
// the LUKS passphrase, so it works unchanged as `--object secret,id=ID,data=TEXT`. Throws
// std::invalid_argument on an empty DEK.
SecureBytes derive_qemu_secret(const SecureBytes& dek);

// True when `id` is a valid QEMU object id: an ASCII letter, then letters, digits, '-', '.' and '_' (QEMU's
// id_wellformed). A command line can check --id with it and report a usage error.
bool is_qemu_object_id(std::string_view id);

// "secret,id=ID,data=TEXT": the argument of QEMU's --object option for `secret`. Throws
// std::invalid_argument unless id is a QEMU object id (a letter, then letters, digits, '-', '.', '_').
SecureBytes qemu_secret_object(const SecureBytes& secret, std::string_view id);

// The base64 of the secret's bytes, the value `virsh secret-set-value` takes.
SecureBytes libvirt_secret_value(const SecureBytes& secret);

}  // namespace vmcrypt::qcow2
