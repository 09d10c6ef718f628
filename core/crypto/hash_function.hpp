#pragma once
// The hash functions that PBKDF2 and the LUKS1 anti-forensic splitter are used with.

#include <cstddef>
#include <string_view>

namespace vmcrypt {

// SHA-1 is here only to read old LUKS1 headers, which cryptsetup made by default before version 1.7. New
// headers use SHA-256.
enum class HashFunction { sha1, sha256, sha512 };

// Digest length in bytes: 20, 32 or 64.
std::size_t digest_size(HashFunction hash);

// The name Botan's lookup functions take ("SHA-1", "SHA-256", "SHA-512").
std::string_view botan_hash_name(HashFunction hash);

}  // namespace vmcrypt
