#pragma once
// A fast 64-bit non-cryptographic hash of a 512-byte unit, used by the crash journal only to tell a
// unit's old content from its new content. The journal's MAC stops forgery, so collision resistance
// against an attacker is not needed. With 64 bits the chance that a rewritten unit matches its old hash
// is about 2^-64 per unit.

#include <cstdint>
#include <span>

namespace vmcrypt {

// Throws std::invalid_argument unless unit is 512 bytes.
std::uint64_t unit_hash(std::span<const std::uint8_t> unit);

// Hashes data.size() / 512 consecutive units into out (which must be that long). Throws
// std::invalid_argument when data is not whole units or out has another length.
void hash_units(std::span<const std::uint8_t> data, std::span<std::uint64_t> out);

}  // namespace vmcrypt
