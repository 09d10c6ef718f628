// Tests of the crypto primitives beyond the vector files: HKDF, Argon2id, key wrap errors, XTS input
// checks and batching, HMAC, SHA-256, the system RNG and the per-unit hash.

#include "core/crypto/kdf.hpp"
#include "core/crypto/key_wrap.hpp"
#include "core/crypto/mac.hpp"
#include "core/crypto/random.hpp"
#include "core/crypto/unit_hash.hpp"
#include "core/crypto/xts.hpp"
#include "core/error.hpp"

#include <botan/cipher_mode.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace vmcrypt {
namespace {

std::vector<std::uint8_t> from_hex(std::string_view hex)
{
    std::vector<std::uint8_t> bytes(hex.size() / 2);
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::uint8_t>(std::stoul(std::string(hex.substr(2 * i, 2)), nullptr, 16));
    return bytes;
}

std::vector<std::uint8_t> bytes_of(std::string_view text)
{
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

template <typename Bytes>
std::vector<std::uint8_t> to_vector(const Bytes& bytes)
{
    return std::vector<std::uint8_t>(bytes.begin(), bytes.end());
}

std::vector<std::uint8_t> random_data(std::size_t size, std::mt19937_64& generator)
{
    std::vector<std::uint8_t> data(size);
    for (auto& byte : data)
        byte = static_cast<std::uint8_t>(generator());
    return data;
}

SecureBytes xts_test_key()
{
    SecureBytes key(xts_key_size);
    for (std::size_t i = 0; i < key.size(); ++i)
        key[i] = static_cast<std::uint8_t>(i * 37 + 11);
    return key;
}

std::array<std::uint8_t, 16> plain64_tweak(std::uint64_t sector)
{
    std::array<std::uint8_t, 16> tweak{};
    for (int i = 0; i < 8; ++i)
        tweak[i] = static_cast<std::uint8_t>(sector >> (8 * i));
    return tweak;
}

// --- HKDF-SHA-256 ---

TEST(Hkdf, Rfc5869TestCase3)
{
    // RFC 5869 appendix A.3: SHA-256 with an empty salt and empty info.
    const std::vector<std::uint8_t> input_key(22, 0x0b);
    const auto expected = from_hex(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
    EXPECT_EQ(to_vector(hkdf_sha256(input_key, "", 42)), expected);
}

TEST(Hkdf, LabelIsInfo)
{
    // Computed with: openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:000102...3f
    //                -kdfopt info:"vmcrypt record MAC" HKDF   (OpenSSL 3.0.19)
    std::vector<std::uint8_t> input_key(64);
    for (std::size_t i = 0; i < input_key.size(); ++i)
        input_key[i] = static_cast<std::uint8_t>(i);
    const auto expected = from_hex("7f6fb82c3a2cfa93898ce28ad4b2a90cdc4559e885db85084355588301126b33");
    EXPECT_EQ(to_vector(hkdf_sha256(input_key, "vmcrypt record MAC", 32)), expected);
    EXPECT_NE(to_vector(hkdf_sha256(input_key, "vmcrypt journal MAC", 32)), expected);
}

TEST(Hkdf, RejectsInvalidLength)
{
    const std::vector<std::uint8_t> input_key(32, 1);
    EXPECT_THROW(hkdf_sha256(input_key, "label", 0), std::invalid_argument);
    EXPECT_THROW(hkdf_sha256(input_key, "label", 255 * 32 + 1), std::invalid_argument);
    EXPECT_EQ(hkdf_sha256(input_key, "label", 255 * 32).size(), 255u * 32);
}

// --- Argon2id ---

struct Argon2Case {
    std::string_view passphrase;
    std::string_view salt;
    Argon2Parameters parameters;
    std::string_view expected_hex;
};

TEST(Argon2id, MatchesReferenceCli)
{
    // Outputs of the Argon2 reference implementation's command line tool (Debian package argon2,
    // 0~20171227), e.g. `echo -n password | argon2 somesalt -id -t 2 -k 65536 -p 1 -l 32 -r`.
    // The first case also appears in the reference implementation's own tests.
    const Argon2Case cases[] = {
        {"password", "somesalt", {65536, 2, 1}, "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"},
        {"password", "somesalt", {256, 3, 2}, "a3161de99d0e7c0762364b2c4b3ea2b950005973f8879d54287fd8bd56921f36"},
        {"correct horse battery staple", "0123456789abcdef", {8, 1, 1},
         "490a2feab5adaf500dabb57b238aca905b9b3f13ce7e46c45d4576da6c4be5a7"
         "f4edc5d19d1742edd3d94e2a7a08b5961c75dc5c459724d7ffc0232682a5e42d"},
    };
    for (const auto& test : cases) {
        SCOPED_TRACE(std::string(test.passphrase) + " / m=" + std::to_string(test.parameters.memory_kib) +
                     " t=" + std::to_string(test.parameters.iterations) +
                     " p=" + std::to_string(test.parameters.parallelism));
        const auto expected = from_hex(test.expected_hex);
        const auto output = argon2id(bytes_of(test.passphrase), bytes_of(test.salt), test.parameters, expected.size());
        EXPECT_EQ(to_vector(output), expected);
    }
}

// Returns the InvalidInput message that argon2id throws for these parameters, or "" if it throws none.
std::string argon2_error(const Argon2Parameters& parameters)
{
    try {
        argon2id(bytes_of("passphrase"), bytes_of("saltsalt"), parameters, 32);
    } catch (const InvalidInput& error) {
        return error.what();
    }
    return "";
}

TEST(Argon2id, RejectsInvalidParameters)
{
    EXPECT_EQ(argon2_error({2, 1, 1}), "argon2id: memory 2 KiB is below the minimum of 8 KiB per lane");
    EXPECT_EQ(argon2_error({15, 1, 2}),
              "argon2id: memory 15 KiB is below the minimum of 8 KiB per lane (16 KiB for 2 lanes)");
    EXPECT_NE(argon2_error({65536, 0, 1}).find("iterations 0"), std::string::npos);
    EXPECT_NE(argon2_error({65536, 1, 0}).find("parallelism 0"), std::string::npos);
    EXPECT_NE(argon2_error({65536, 1, 129}).find("parallelism 129"), std::string::npos);
    EXPECT_NE(argon2_error({4u * 1024 * 1024 + 1, 1, 1}).find("above vmcrypt's maximum"), std::string::npos);
    EXPECT_NE(argon2_error({0xFFFFFFFFu, 3, 1}).find("memory 4294967295 KiB"), std::string::npos);
    EXPECT_NE(argon2_error({65536, 1001, 1}).find("iterations 1001"), std::string::npos);
    EXPECT_EQ(argon2_error({16, 1, 2}), "");
}

TEST(Argon2id, RejectsShortOutput)
{
    EXPECT_THROW(argon2id(bytes_of("passphrase"), bytes_of("saltsalt"), {8, 1, 1}, 3), std::invalid_argument);
}

// --- Key wrap ---

TEST(KeyWrap, RoundTripsDek)
{
    const SecureBytes kek = random_bytes(kek_size);
    const SecureBytes dek = random_bytes(xts_key_size);
    const auto wrapped = wrap_key(kek, dek);
    EXPECT_EQ(wrapped.size(), dek.size() + 8);
    EXPECT_EQ(unwrap_key(kek, wrapped), dek);
}

TEST(KeyWrap, WrongKekThrowsUnwrapFailed)
{
    const SecureBytes kek = random_bytes(kek_size);
    SecureBytes other_kek = kek;
    other_kek[0] ^= 1;
    const auto wrapped = wrap_key(kek, random_bytes(xts_key_size));

    try {
        unwrap_key(other_kek, wrapped);
        FAIL() << "unwrap_key accepted a wrong KEK";
    } catch (const UnwrapFailed& error) {
        EXPECT_EQ(error.code(), ExitCode::key_error);
        EXPECT_STREQ(error.what(), "the key does not unwrap the data key (RFC 3394 integrity check failed)");
    }
}

TEST(KeyWrap, TamperedBlobThrowsUnwrapFailed)
{
    const SecureBytes kek = random_bytes(kek_size);
    auto wrapped = wrap_key(kek, random_bytes(xts_key_size));
    for (std::size_t i = 0; i < wrapped.size(); i += 7) {
        auto tampered = wrapped;
        tampered[i] ^= 0x80;
        EXPECT_THROW(unwrap_key(kek, tampered), UnwrapFailed) << "byte " << i;
    }
}

TEST(KeyWrap, RejectsBadSizes)
{
    const SecureBytes kek = random_bytes(kek_size);
    const SecureBytes dek = random_bytes(xts_key_size);
    for (std::size_t kek_length : {0, 16, 24, 31, 33, 64}) {
        EXPECT_THROW(wrap_key(SecureBytes(kek_length, 1), dek), BadKeyLength) << "KEK of " << kek_length << " bytes";
        EXPECT_THROW(unwrap_key(SecureBytes(kek_length, 1), std::vector<std::uint8_t>(72)), BadKeyLength)
            << "KEK of " << kek_length << " bytes";
    }
    for (std::size_t key_length : {0, 8, 15, 20, 33}) {
        EXPECT_THROW(wrap_key(kek, SecureBytes(key_length, 1)), BadKeyLength) << "key of " << key_length << " bytes";
    }
    for (std::size_t wrapped_length : {0, 8, 16, 25, 71}) {
        EXPECT_THROW(unwrap_key(kek, std::vector<std::uint8_t>(wrapped_length)), BadKeyLength)
            << "wrapped key of " << wrapped_length << " bytes";
    }
}

// --- AES-256-XTS ---

TEST(Xts, RejectsBadKeyLength)
{
    for (std::size_t length : {0, 32, 63, 65, 128}) {
        const SecureBytes key(length, 1);
        EXPECT_THROW(XtsCipher{key}, BadKeyLength) << "key of " << length << " bytes";
    }
}

TEST(Xts, RejectsEqualKeyHalves)
{
    SecureBytes key(xts_key_size);
    for (std::size_t i = 0; i < key.size(); ++i)
        key[i] = static_cast<std::uint8_t>(i % 32);
    EXPECT_THROW(XtsCipher{key}, BadKeyLength);

    key[63] ^= 1;
    EXPECT_NO_THROW(XtsCipher{key});
}

TEST(Xts, RejectsPartialUnits)
{
    const XtsCipher cipher(xts_test_key());
    for (std::size_t size : {1, 16, 511, 513, 1000}) {
        std::vector<std::uint8_t> data(size);
        EXPECT_THROW(cipher.encrypt_units(data, 0), std::invalid_argument) << size << " bytes";
        EXPECT_THROW(cipher.decrypt_units(data, 0), std::invalid_argument) << size << " bytes";
    }
    std::vector<std::uint8_t> empty;
    EXPECT_NO_THROW(cipher.encrypt_units(empty, 0));
}

TEST(Xts, RejectsSectorOverflow)
{
    const XtsCipher cipher(xts_test_key());
    std::vector<std::uint8_t> two_units(2 * xts_unit_size);
    EXPECT_THROW(cipher.encrypt_units(two_units, UINT64_MAX), std::invalid_argument);
    std::vector<std::uint8_t> one_unit(xts_unit_size);
    EXPECT_NO_THROW(cipher.encrypt_units(one_unit, UINT64_MAX));
}

TEST(Xts, RejectsInvalidUnitSizes)
{
    const XtsCipher cipher(xts_test_key());
    const std::array<std::uint8_t, 16> tweak{};
    for (std::size_t size : {0, 1, 15, 17, 31, 33}) {
        std::vector<std::uint8_t> data(size);
        EXPECT_THROW(cipher.encrypt_unit(data, tweak), std::invalid_argument) << size << " bytes";
        EXPECT_THROW(cipher.decrypt_unit(data, tweak), std::invalid_argument) << size << " bytes";
    }
}

TEST(Xts, BatchEqualsSingleUnits)
{
    const XtsCipher cipher(xts_test_key());
    std::mt19937_64 generator(1619);
    const std::uint64_t first_sector = 0xFFFFFFF0;  // crosses 2^32 in the larger batches

    for (std::size_t unit_count : {1, 2, 3, 8, 9, 11, 31, 64, 65, 100, 1000}) {
        SCOPED_TRACE(std::to_string(unit_count) + " units");
        const auto plaintext = random_data(unit_count * xts_unit_size, generator);

        auto batch = plaintext;
        cipher.encrypt_units(batch, first_sector);

        auto single = plaintext;
        for (std::size_t i = 0; i < unit_count; ++i) {
            std::span<std::uint8_t> unit(single.data() + i * xts_unit_size, xts_unit_size);
            cipher.encrypt_units(unit, first_sector + i);
        }
        EXPECT_EQ(batch, single);
        EXPECT_NE(batch, plaintext);

        cipher.decrypt_units(batch, first_sector);
        EXPECT_EQ(batch, plaintext);
    }
}

TEST(Xts, DecryptUnitInvertsEncryptUnit)
{
    const XtsCipher cipher(xts_test_key());
    std::mt19937_64 generator(42);
    for (std::size_t size : {16, 32, 496, 512, 4096, 16384, 16400, 40000}) {
        const auto plaintext = random_data(size, generator);
        std::array<std::uint8_t, 16> tweak;
        for (auto& byte : tweak)
            byte = static_cast<std::uint8_t>(generator());

        auto data = plaintext;
        cipher.encrypt_unit(data, tweak);
        EXPECT_NE(data, plaintext) << size << " bytes";
        cipher.decrypt_unit(data, tweak);
        EXPECT_EQ(data, plaintext) << size << " bytes";
    }
}

// Botan's own XTS mode is an independent implementation of the same standard.
std::vector<std::uint8_t> botan_xts(const SecureBytes& key, std::span<const std::uint8_t, 16> tweak,
                                     const std::vector<std::uint8_t>& input, Botan::Cipher_Dir direction)
{
    auto mode = Botan::Cipher_Mode::create_or_throw("AES-256/XTS", direction);
    mode->set_key(key);
    mode->start(tweak.data(), tweak.size());
    Botan::secure_vector<std::uint8_t> buffer(input.begin(), input.end());
    mode->finish(buffer);
    return to_vector(buffer);
}

TEST(Xts, MatchesBotanXtsMode)
{
    const SecureBytes key = random_bytes(xts_key_size);
    const XtsCipher cipher(key);
    std::mt19937_64 generator(2007);

    for (std::size_t size : {16, 48, 512, 4096, 16384, 16400, 65536, 100000}) {
        const auto plaintext = random_data(size, generator);
        std::array<std::uint8_t, 16> tweak;
        for (auto& byte : tweak)
            byte = static_cast<std::uint8_t>(generator());

        auto data = plaintext;
        cipher.encrypt_unit(data, tweak);
        EXPECT_EQ(data, botan_xts(key, tweak, plaintext, Botan::ENCRYPTION)) << size << " bytes";
    }

    // Units with plain64 tweaks at sectors that exercise all bits of the sector number.
    for (std::uint64_t sector : {0ULL, 1ULL, 255ULL, 0x123456789aULL, 1ULL << 63, ~0ULL}) {
        const auto plaintext = random_data(xts_unit_size, generator);
        auto data = plaintext;
        cipher.encrypt_units(data, sector);
        EXPECT_EQ(data, botan_xts(key, plain64_tweak(sector), plaintext, Botan::ENCRYPTION)) << "sector " << sector;
        EXPECT_EQ(botan_xts(key, plain64_tweak(sector), data, Botan::DECRYPTION), plaintext) << "sector " << sector;
    }
}

// The VAES path against the Botan AES path, on batches that cover partial tweak batches and sector
// numbers whose tweaks carry across the 64-bit halves.
TEST(Xts, VaesMatchesBotanAes)
{
    const SecureBytes key = random_bytes(xts_key_size);
    const XtsCipher fastest(key, XtsBackend::fastest);
    const XtsCipher botan(key, XtsBackend::botan_aes);
    ASSERT_FALSE(botan.uses_vaes());
    if (!fastest.uses_vaes())
        GTEST_SKIP() << "this CPU has no AVX-512 VAES";

    std::mt19937_64 generator(1619);
    for (std::size_t units : {1, 7, 8, 63, 64, 65, 200}) {
        for (std::uint64_t first_sector : {0ULL, 12345ULL, (1ULL << 32) - 3, ~0ULL - 300}) {
            const auto plaintext = random_data(units * xts_unit_size, generator);
            auto expected = plaintext;
            botan.encrypt_units(expected, first_sector);
            auto data = plaintext;
            fastest.encrypt_units(data, first_sector);
            EXPECT_EQ(data, expected) << units << " units at sector " << first_sector;
            fastest.decrypt_units(data, first_sector);
            EXPECT_EQ(data, plaintext) << units << " units at sector " << first_sector;
        }
    }
}

TEST(Xts, ConcurrentCallsAgree)
{
    const XtsCipher cipher(xts_test_key());
    std::mt19937_64 generator(7);
    const auto plaintext = random_data(256 * xts_unit_size, generator);
    auto expected = plaintext;
    cipher.encrypt_units(expected, 1000);

    std::vector<std::vector<std::uint8_t>> results(4, plaintext);
    std::vector<std::thread> threads;
    for (auto& result : results) {
        threads.emplace_back([&cipher, &result] {
            for (int round = 0; round < 50; ++round) {
                cipher.encrypt_units(result, 1000);
                cipher.decrypt_units(result, 1000);
            }
            cipher.encrypt_units(result, 1000);
        });
    }
    for (auto& thread : threads)
        thread.join();
    for (const auto& result : results)
        EXPECT_EQ(result, expected);
}

// --- HMAC-SHA-256, SHA-256, constant-time comparison ---

TEST(Mac, HmacSha256Rfc4231TestCase2)
{
    const auto mac = hmac_sha256(bytes_of("Jefe"), bytes_of("what do ya want for nothing?"));
    EXPECT_EQ(to_vector(mac), from_hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
}

TEST(Mac, Sha256OfAbc)
{
    // FIPS 180-2 appendix B.1.
    EXPECT_EQ(to_vector(sha256(bytes_of("abc"))),
              from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
}

TEST(Mac, EqualConstantTime)
{
    const auto a = from_hex("00112233445566778899aabbccddeeff");
    auto b = a;
    EXPECT_TRUE(equal_constant_time(a, b));
    b.back() ^= 1;
    EXPECT_FALSE(equal_constant_time(a, b));
    b = a;
    b.front() ^= 0x80;
    EXPECT_FALSE(equal_constant_time(a, b));
    EXPECT_FALSE(equal_constant_time(a, std::span<const std::uint8_t>(a).first(15)));
    EXPECT_TRUE(equal_constant_time({}, {}));
}

// --- System RNG ---

TEST(Random, ReturnsRequestedLength)
{
    EXPECT_EQ(random_bytes(0).size(), 0u);
    EXPECT_EQ(random_bytes(64).size(), 64u);
    EXPECT_NE(random_bytes(32), random_bytes(32));
}

// --- Per-unit hash ---

TEST(UnitHash, MatchesXxhsum)
{
    // Values from `xxhsum -H3` (xxHash 0.8.1), which prints XXH3_64bits with seed 0.
    std::vector<std::uint8_t> counter(512);
    std::vector<std::uint8_t> stride(512);
    std::vector<std::uint8_t> offset_stride(512);
    for (std::size_t i = 0; i < 512; ++i) {
        counter[i] = static_cast<std::uint8_t>(i);
        stride[i] = static_cast<std::uint8_t>(i * 7);
        offset_stride[i] = static_cast<std::uint8_t>((i + 5 * 512) * 131);
    }

    EXPECT_EQ(unit_hash(std::vector<std::uint8_t>(512, 0)), 0xb2987a9d949e807cULL);
    EXPECT_EQ(unit_hash(std::vector<std::uint8_t>(512, 0xff)), 0xde679a2671a7d37aULL);
    EXPECT_EQ(unit_hash(counter), 0x1059105ad19bfa09ULL);
    EXPECT_EQ(unit_hash(stride), 0xf6fe51471f2fa1ecULL);
    EXPECT_EQ(unit_hash(offset_stride), 0xd3a5291037dfe500ULL);
}

TEST(UnitHash, RejectsOtherSizes)
{
    for (std::size_t size : {0, 1, 511, 513, 1024})
        EXPECT_THROW(unit_hash(std::vector<std::uint8_t>(size)), std::invalid_argument) << size << " bytes";
}

TEST(UnitHash, DiffersOnSingleBitFlips)
{
    std::mt19937_64 generator(512);
    std::set<std::uint64_t> seen;
    for (int unit_index = 0; unit_index < 20; ++unit_index) {
        auto unit = random_data(512, generator);
        const std::uint64_t original = unit_hash(unit);
        seen.insert(original);
        for (int flip = 0; flip < 500; ++flip) {
            const std::size_t bit = generator() % (512 * 8);
            unit[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
            const std::uint64_t flipped = unit_hash(unit);
            EXPECT_NE(flipped, original) << "unit " << unit_index << ", bit " << bit;
            seen.insert(flipped);
            unit[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
        }
        EXPECT_EQ(unit_hash(unit), original);
    }
    // 10000 flips give 10000 inputs, fewer where a unit draws the same bit twice, and all of their hashes
    // should differ.
    EXPECT_GT(seen.size(), 20u * 400);
}

TEST(UnitHash, DiffersOnEveryBitOfZeroUnit)
{
    std::vector<std::uint8_t> unit(512, 0);
    const std::uint64_t zero_hash = unit_hash(unit);
    std::set<std::uint64_t> seen{zero_hash};
    for (std::size_t bit = 0; bit < 512 * 8; ++bit) {
        unit[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
        EXPECT_TRUE(seen.insert(unit_hash(unit)).second) << "bit " << bit;
        unit[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    }
}

TEST(UnitHash, HashUnitsMatchesUnitHash)
{
    std::mt19937_64 generator(3);
    const auto data = random_data(9 * 512, generator);
    std::vector<std::uint64_t> hashes(9);
    hash_units(data, hashes);
    for (std::size_t i = 0; i < hashes.size(); ++i)
        EXPECT_EQ(hashes[i], unit_hash(std::span<const std::uint8_t>(data).subspan(i * 512, 512))) << "unit " << i;

    std::vector<std::uint64_t> too_few(8);
    EXPECT_THROW(hash_units(data, too_few), std::invalid_argument);
    EXPECT_THROW(hash_units(std::span<const std::uint8_t>(data).first(600), std::span<std::uint64_t>(hashes).first(1)),
                 std::invalid_argument);
}

}  // namespace
}  // namespace vmcrypt
