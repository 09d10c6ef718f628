#pragma once
// A check value that binds an encryption record to the ciphertext it describes, so a record copied onto
// another disk (a descriptor copied between cloned VMs) is rejected before decrypt touches any data.
//
// It is an HMAC-SHA-256, keyed with HKDF-SHA-256(DEK, "vmcrypt data check v1"), over the first eight
// non-zero 512-byte units of the disk's data runs, each preceded by its sector number (64-bit
// little-endian). A disk with no non-zero unit gets the HMAC of the empty message, which is harmless:
// decrypting all-zero data leaves it all zero.

#include "core/crypto/secure.hpp"
#include "core/disk.hpp"

#include <string>

namespace vmcrypt {

// The check value in base64 (44 characters).
std::string compute_data_check(Disk& disk, const SecureBytes& dek);

}  // namespace vmcrypt
