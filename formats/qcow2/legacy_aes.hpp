#pragma once
// Unlocking a legacy qcow AES image (crypt_method 1) with its password.
//
// QEMU keys AES-128-CBC with the password's first 16 bytes, zero-padded, and stores nothing to check
// the key against, so a wrong password decrypts to random-looking bytes without an error. So vmcrypt
// checks the password on the data: it decrypts a sample of sectors and accepts the key when one of
// them has the structure of real data, one byte value in at least 32 of its 512 bytes.
// A wrong key passes with probability below 2^-73 (see legacy_aes.cpp).

#include "core/crypto/secure.hpp"
#include "core/io/file.hpp"
#include "formats/qcow2/cluster_map.hpp"

#include <string>

namespace vmcrypt::qcow2 {

// Returns the AES-128 key of `password` after checking it on up to 256 sectors of the image's data
// runs (which must number sectors by guest offset): the first 64 in guest order and 192 spread over
// the rest. Throws WrongKey when no sampled sector looks like real data. An image without data
// accepts any password, since there is nothing to decrypt.
// NOTE: an image whose every sampled sector contains random-looking data (a guest that encrypts or
// compresses its whole disk) is rejected as well; decrypt such an image with qemu-img convert.
SecureBytes unlock_legacy_aes(const File& file, const ClusterMap& map, const SecureBytes& password,
                              const std::string& where);

}  // namespace vmcrypt::qcow2
