#pragma once
// AES-256-XTS over whole 512-byte units with VAES on 512-bit vectors (x86-64 CPUs with AVX-512F,
// AVX-512BW and VAES). Each vector carries four AES blocks, so a unit is eight vectors and the 14 rounds
// of all eight run interleaved. The tweaks stay in registers: a unit's first vector contains T, T*x, T*x^2
// and T*x^3, and each next one is the previous times x^4.
//
// Internal to XtsCipher, which computes the initial tweaks and checks sizes. Call nothing here unless
// vaes_available() is true.

#include <cstddef>
#include <cstdint>

namespace vmcrypt::xts_vaes {

// The expanded AES-256 data key: 15 round keys for encryption and 15 for the equivalent inverse cipher.
// Secret: keep it in secure memory and scrub it.
struct RoundKeys {
    alignas(64) std::uint8_t encrypt[15][16];
    alignas(64) std::uint8_t decrypt[15][16];
};

// Whether this CPU and the operating system support AVX-512F, AVX-512BW and VAES.
bool vaes_available() noexcept;

// Expands a 32-byte AES-256 key (AES-NI key expansion).
void expand_key(const std::uint8_t* key, RoundKeys& keys) noexcept;

// Encrypts (or decrypts) unit_count 512-byte units from input to output, which may be the same buffer.
// initial_tweaks contains 16 bytes per unit: the unit's tweak value already encrypted under the tweak key.
void encrypt_units(const RoundKeys& keys, const std::uint8_t* input, std::uint8_t* output, std::size_t unit_count,
                   const std::uint8_t* initial_tweaks) noexcept;
void decrypt_units(const RoundKeys& keys, const std::uint8_t* input, std::uint8_t* output, std::size_t unit_count,
                   const std::uint8_t* initial_tweaks) noexcept;

}  // namespace vmcrypt::xts_vaes
