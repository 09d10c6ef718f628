#pragma once
// Applying a unit cipher (XTS, or CBC for a legacy qcow AES decrypt) to the units of a window, with the
// zero-unit rule: a unit whose input is all zero bytes is left as zeros in both directions. So
// plaintext zeros stay zeros (thin and sparse disks stay thin) and stored zeros read as zero
// plaintext. An all-zero ciphertext of a non-zero plaintext unit has probability 2^-4096 and is not
// handled.

#include "core/crypto/unit_cipher.hpp"
#include "core/engine/run_stream.hpp"

#include <span>
#include <vector>

namespace vmcrypt {

// reencrypt: decrypt with the previous DEK, then encrypt with the current one (deep rekey).
enum class Direction { encrypt, decrypt, reencrypt };

// Whether all-zero units stay zeros (VMDK, which keeps thin disks thin) or are transformed like any
// other unit (qcow2 LUKS, where QEMU decrypts every allocated unit).
enum class ZeroUnits { kept, transformed };

bool is_zero_unit(std::span<const std::uint8_t> unit);

// Transforms units [first_unit, end_unit) of `buffer`, on the calling thread. `segments` give each
// unit's tweak; `selected`, when non-empty, limits the transform to units whose flag is set. With
// `unit_hashes` (unit_hash of every unit of the buffer) only units that hash like a zero unit are
// scanned for zeros, which saves a pass over the data. Direction::reencrypt needs `previous`, the cipher
// of the previous DEK; with ZeroUnits::kept a unit that decrypts to all zeros is then stored as zeros.
//
// With `source`, the units' old content is read from there (source[0] is unit first_unit's first byte,
// and the range must not overlap the output) and the result, transformed or not, is written to
// `output` (output[0] is unit first_unit's first byte), else to `buffer`. Without `source`, the buffer
// contains the old content and is transformed in place.
void transform_units(const UnitCipher& cipher, Direction direction, std::span<std::uint8_t> buffer,
                     const std::vector<RunSegment>& segments, const std::vector<bool>& selected,
                     std::uint64_t first_unit, std::uint64_t end_unit,
                     const std::vector<std::uint64_t>* unit_hashes = nullptr, ZeroUnits zero_units = ZeroUnits::kept,
                     const UnitCipher* previous = nullptr, const std::uint8_t* source = nullptr,
                     std::uint8_t* output = nullptr);

// Transforms the units of `buffer` described by `segments`. When `selected` is non-empty, only units
// whose flag is set are transformed (recovery of a partly rewritten window). Uses `threads` threads.
void transform_window(const UnitCipher& cipher, Direction direction, std::span<std::uint8_t> buffer,
                      const std::vector<RunSegment>& segments, const std::vector<bool>& selected,
                      unsigned threads, ZeroUnits zero_units = ZeroUnits::kept, const UnitCipher* previous = nullptr);

}  // namespace vmcrypt
