#pragma once
// Secret bytes: zeroed on release and kept out of swap where Botan's locking allocator can.

#include <botan/secmem.h>

#include <cstdint>

namespace vmcrypt {

using SecureBytes = Botan::secure_vector<std::uint8_t>;

}  // namespace vmcrypt
