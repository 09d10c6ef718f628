#include "core/crypto/hash_function.hpp"

namespace vmcrypt {

std::size_t digest_size(HashFunction hash)
{
    switch (hash) {
    case HashFunction::sha1:
        return 20;
    case HashFunction::sha256:
        return 32;
    case HashFunction::sha512:
        return 64;
    }
    return 0;
}

std::string_view botan_hash_name(HashFunction hash)
{
    switch (hash) {
    case HashFunction::sha1:
        return "SHA-1";
    case HashFunction::sha256:
        return "SHA-256";
    case HashFunction::sha512:
        return "SHA-512";
    }
    return {};
}

}  // namespace vmcrypt
