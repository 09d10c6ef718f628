// HKDF-SHA-256 and Argon2id on Botan, with Argon2id's parameters checked before any memory is allocated.

#include "core/crypto/kdf.hpp"

#include "core/error.hpp"

#include <botan/argon2.h>
#include <botan/kdf.h>

#include <stdexcept>
#include <string>

namespace vmcrypt {

namespace {

constexpr std::size_t sha256_size = 32;
constexpr std::size_t hkdf_max_length = 255 * sha256_size;  // RFC 5869: L <= 255 * HashLen

// Argon2 (RFC 9106) needs 8 KiB of memory per lane and a tag of at least 4 bytes.
constexpr std::uint32_t argon2_min_memory_kib_per_lane = 8;
constexpr std::size_t argon2_min_tag_length = 4;
// Botan 2 accepts at most 128 lanes.
constexpr std::uint32_t argon2_max_parallelism = 128;
// A bound on the time cost, so a crafted key slot cannot make unlocking run for hours; the CLI offers
// the same range.
constexpr std::uint32_t argon2_max_iterations = 1000;
// vmcrypt's own ceiling, so that a crafted record cannot make the machine allocate more than 4 GiB.
constexpr std::uint32_t argon2_max_memory_kib = 4u * 1024 * 1024;

// Botan's Argon2 family id for Argon2id (0 = Argon2d, 1 = Argon2i, 2 = Argon2id).
constexpr std::uint8_t botan_argon2id = 2;

void check_argon2_parameters(const Argon2Parameters& parameters)
{
    if (parameters.parallelism == 0 || parameters.parallelism > argon2_max_parallelism)
        throw InvalidInput("argon2id: parallelism " + std::to_string(parameters.parallelism) +
                           " is invalid, expected 1 to " + std::to_string(argon2_max_parallelism) + " lanes");
    if (parameters.iterations == 0 || parameters.iterations > argon2_max_iterations)
        throw InvalidInput("argon2id: iterations " + std::to_string(parameters.iterations) +
                           " is invalid, expected 1 to " + std::to_string(argon2_max_iterations));

    const std::uint64_t min_memory_kib =
        std::uint64_t{argon2_min_memory_kib_per_lane} * parameters.parallelism;
    if (parameters.memory_kib < min_memory_kib) {
        std::string message = "argon2id: memory " + std::to_string(parameters.memory_kib) +
                              " KiB is below the minimum of " + std::to_string(argon2_min_memory_kib_per_lane) +
                              " KiB per lane";
        if (parameters.parallelism > 1)
            message += " (" + std::to_string(min_memory_kib) + " KiB for " +
                       std::to_string(parameters.parallelism) + " lanes)";
        throw InvalidInput(message);
    }
    if (parameters.memory_kib > argon2_max_memory_kib)
        throw InvalidInput("argon2id: memory " + std::to_string(parameters.memory_kib) +
                           " KiB is above vmcrypt's maximum of " + std::to_string(argon2_max_memory_kib) +
                           " KiB (4 GiB)");
}

}  // namespace

SecureBytes hkdf_sha256(std::span<const std::uint8_t> input_key, std::string_view label, std::size_t length)
{
    if (length == 0 || length > hkdf_max_length)
        throw std::invalid_argument("HKDF-SHA-256: output length " + std::to_string(length) +
                                    " is invalid, expected 1 to " + std::to_string(hkdf_max_length) + " bytes");

    const auto kdf = Botan::KDF::create_or_throw("HKDF(SHA-256)");
    return kdf->derive_key(length, input_key.data(), input_key.size(), nullptr, 0,
                           reinterpret_cast<const std::uint8_t*>(label.data()), label.size());
}

SecureBytes argon2id(std::span<const std::uint8_t> passphrase, std::span<const std::uint8_t> salt,
                     const Argon2Parameters& parameters, std::size_t length)
{
    check_argon2_parameters(parameters);
    if (length < argon2_min_tag_length)
        throw std::invalid_argument("argon2id: output length " + std::to_string(length) +
                                    " is invalid, expected at least " + std::to_string(argon2_min_tag_length) +
                                    " bytes");

    const Botan::Argon2 argon2(botan_argon2id, parameters.memory_kib, parameters.iterations,
                               parameters.parallelism);
    SecureBytes output(length);
    argon2.derive_key(output.data(), output.size(), reinterpret_cast<const char*>(passphrase.data()),
                      passphrase.size(), salt.data(), salt.size());
    return output;
}

}  // namespace vmcrypt
