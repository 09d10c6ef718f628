// Measures vmcrypt's AES-256-XTS speed on 512-byte data units, each with its own plain64 tweak, on one
// thread. It prints the rate in MB/s (10^6 bytes per second) per second of the thread's CPU time, as
// `openssl speed` does by default, and per second of wall-clock time. The two differ when other
// processes compete for the core.
//
// Usage: vmcrypt_xts_speed [SECONDS [BUFFER_MIB [encrypt|decrypt|openssl]]]
// Defaults: 2 seconds, a 64 MiB buffer (larger than the L3 cache of most machines), encrypt. The
// buffer is processed in 1 MiB calls, as an engine that reads and writes 1 MiB windows would make.
// "openssl" encrypts the same buffer with OpenSSL's EVP_aes_256_xts instead, setting the tweak and
// encrypting one unit per EVP call; it is available when CMake found OpenSSL.

#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#ifdef VMCRYPT_BENCH_OPENSSL
#include <openssl/evp.h>
#endif

namespace {

constexpr std::size_t call_size = std::size_t{1} << 20;

double thread_cpu_seconds()
{
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

int usage(const char* program)
{
    std::fprintf(stderr,
                 "usage: %s [SECONDS [BUFFER_MIB [encrypt|decrypt|openssl]]]\n"
                 "  SECONDS     how long to run, at least 0.1 (default 2)\n"
                 "  BUFFER_MIB  size of the buffer processed over and over, in MiB, at least 1 (default 64)\n",
                 program);
    return 2;
}

#ifdef VMCRYPT_BENCH_OPENSSL
// Encrypts the window unit by unit with OpenSSL, as a disk encryptor built on EVP would.
void openssl_encrypt_units(EVP_CIPHER_CTX* context, std::span<std::uint8_t> window, std::uint64_t first_sector)
{
    for (std::size_t offset = 0; offset < window.size(); offset += vmcrypt::xts_unit_size) {
        std::uint8_t tweak[16] = {};
        const std::uint64_t sector = first_sector + offset / vmcrypt::xts_unit_size;
        for (int i = 0; i < 8; ++i)
            tweak[i] = static_cast<std::uint8_t>(sector >> (8 * i));
        int length = 0;
        if (EVP_EncryptInit_ex(context, nullptr, nullptr, nullptr, tweak) != 1 ||
            EVP_EncryptUpdate(context, window.data() + offset, &length, window.data() + offset,
                              static_cast<int>(vmcrypt::xts_unit_size)) != 1) {
            std::fprintf(stderr, "OpenSSL AES-256-XTS encryption failed\n");
            std::exit(1);
        }
    }
}
#endif

}  // namespace

int main(int argc, char** argv)
{
    const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;
    const long buffer_mib = argc > 2 ? std::atol(argv[2]) : 64;
    const char* mode = argc > 3 ? argv[3] : "encrypt";
    const bool decrypt = std::strcmp(mode, "decrypt") == 0;
    const bool openssl = std::strcmp(mode, "openssl") == 0;
    if (argc > 4 || seconds < 0.1 || buffer_mib < 1 || (!decrypt && !openssl && std::strcmp(mode, "encrypt") != 0))
        return usage(argv[0]);
#ifdef VMCRYPT_BENCH_OPENSSL
    EVP_CIPHER_CTX* const openssl_context = EVP_CIPHER_CTX_new();
    if (openssl_context == nullptr)
        return 1;
#else
    if (openssl) {
        std::fprintf(stderr, "%s: built without OpenSSL, so the openssl mode is not available\n", argv[0]);
        return 2;
    }
#endif

    const std::size_t buffer_size = static_cast<std::size_t>(buffer_mib) << 20;
    const vmcrypt::SecureBytes key = vmcrypt::random_bytes(vmcrypt::xts_key_size);
    const vmcrypt::XtsCipher cipher(key);
#ifdef VMCRYPT_BENCH_OPENSSL
    if (EVP_EncryptInit_ex(openssl_context, EVP_aes_256_xts(), nullptr, key.data(), nullptr) != 1)
        return 1;
#endif
    std::vector<std::uint8_t> buffer(buffer_size, 0x5a);

    using Clock = std::chrono::steady_clock;
    const double cpu_start = thread_cpu_seconds();
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    std::uint64_t bytes = 0;
    std::uint64_t sector = 0;
    while (Clock::now() < deadline) {
        for (std::size_t offset = 0; offset < buffer_size; offset += call_size) {
            const std::span<std::uint8_t> window(buffer.data() + offset, call_size);
            if (decrypt)
                cipher.decrypt_units(window, sector);
#ifdef VMCRYPT_BENCH_OPENSSL
            else if (openssl)
                openssl_encrypt_units(openssl_context, window, sector);
#endif
            else
                cipher.encrypt_units(window, sector);
            sector += call_size / vmcrypt::xts_unit_size;
        }
        bytes += buffer_size;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu_time = thread_cpu_seconds() - cpu_start;

#ifdef VMCRYPT_BENCH_OPENSSL
    EVP_CIPHER_CTX_free(openssl_context);
#endif

    std::printf("%s AES-256-XTS %s, 512-byte units, %ld MiB buffer, %.0f MiB in %.2f s wall, %.2f s CPU: "
                "%.0f MB/s wall-clock, %.0f MB/s CPU\n",
                openssl ? "OpenSSL" : "vmcrypt", openssl ? "encrypt" : mode, buffer_mib,
                static_cast<double>(bytes) / (1 << 20), elapsed, cpu_time, static_cast<double>(bytes) / elapsed / 1e6,
                static_cast<double>(bytes) / cpu_time / 1e6);
    return 0;
}
