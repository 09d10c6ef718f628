#pragma once
// HMAC-SHA-256 and constant-time comparison.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>

namespace vmcrypt {

using Mac = std::array<std::uint8_t, 32>;

Mac hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> message);

// Computes the MAC of the concatenation of `parts` without building the concatenation.
Mac hmac_sha256(std::span<const std::uint8_t> key, std::initializer_list<std::span<const std::uint8_t>> parts);

bool equal_constant_time(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

// SHA-256 of a message (for layout fingerprints and test helpers, not for secrets).
std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> message);

}  // namespace vmcrypt
