#pragma once
// Key material and salts from the operating system's RNG (getrandom).

#include "core/crypto/secure.hpp"

namespace vmcrypt {

SecureBytes random_bytes(std::size_t length);

}  // namespace vmcrypt
