// Random key material and salts from the operating system's RNG, through Botan's System_RNG.

#include "core/crypto/random.hpp"

#include <botan/system_rng.h>

namespace vmcrypt {

SecureBytes random_bytes(std::size_t length)
{
    return Botan::system_rng().random_vec(length);
}

}  // namespace vmcrypt
