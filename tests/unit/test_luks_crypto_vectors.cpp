// Known-answer tests of the LUKS1 and legacy qcow primitives against the vector files in tests/data:
// PBKDF2 (RFC 6070, RFC 7914 section 11, SHA-512 set), the AF splitter (Python hashlib reimplementation)
// and AES-128-CBC with plain64 IVs (Python `cryptography`).

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/crypto/unit_cipher.hpp"
#include "core/crypto/af_split.hpp"
#include "core/crypto/pbkdf2.hpp"
#include "core/error.hpp"
#include "vector_file.hpp"

#include <botan/pwdhash.h>
#include <gtest/gtest.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace vmcrypt {
namespace {

using test::from_hex;
using test::read_vectors;

HashFunction hash_named(const std::string& name)
{
    static const std::map<std::string, HashFunction> hashes = {
        {"sha1", HashFunction::sha1}, {"sha256", HashFunction::sha256}, {"sha512", HashFunction::sha512}};
    return hashes.at(name);
}

TEST(Pbkdf2Vectors, MatchPublishedSets)
{
    const auto vectors = read_vectors("pbkdf2.txt");
    std::map<std::string, int> per_hash;
    for (const auto& vector : vectors) {
        SCOPED_TRACE(vector.description);
        const auto password = from_hex(vector.at("Password"));
        const auto salt = from_hex(vector.at("Salt"));
        const auto expected = from_hex(vector.at("Output"));
        const auto iterations = static_cast<std::uint32_t>(std::stoul(vector.at("Iterations")));

        const SecureBytes output =
            pbkdf2_hmac(hash_named(vector.at("Hash")), password, salt, iterations, expected.size());
        EXPECT_EQ(std::vector<std::uint8_t>(output.begin(), output.end()), expected);
        ++per_hash[vector.at("Hash")];
    }
    EXPECT_EQ(per_hash["sha1"], 5);
    EXPECT_EQ(per_hash["sha256"], 6);
    EXPECT_EQ(per_hash["sha512"], 2);
}

TEST(Pbkdf2, Sha256MatchesBotanPbkdf2)
{
    // The SHA-256 loop against Botan's generic PBKDF2 over password lengths around the HMAC block size
    // and outputs of partial, whole and several blocks.
    const auto family = Botan::PasswordHashFamily::create_or_throw("PBKDF2(HMAC(SHA-256))");
    for (const std::size_t password_size : {0, 1, 31, 63, 64, 65, 128, 300}) {
        for (const std::size_t length : {1, 31, 32, 33, 64, 65, 97}) {
            for (const std::uint32_t iterations : {1u, 2u, 3u, 17u}) {
                SCOPED_TRACE(std::to_string(password_size) + "-byte password, " + std::to_string(length) +
                             " bytes, " + std::to_string(iterations) + " iterations");
                std::vector<std::uint8_t> password(password_size);
                for (std::size_t i = 0; i < password_size; ++i)
                    password[i] = static_cast<std::uint8_t>(i * 31 + length);
                const std::vector<std::uint8_t> salt(length % 40, static_cast<std::uint8_t>(iterations));

                SecureBytes expected(length);
                family->from_iterations(iterations)
                    ->derive_key(expected.data(), expected.size(), reinterpret_cast<const char*>(password.data()),
                                 password.size(), salt.data(), salt.size());
                EXPECT_EQ(pbkdf2_hmac(HashFunction::sha256, password, salt, iterations, length), expected);
            }
        }
    }
}

TEST(Pbkdf2, RejectsZeroIterationsAndLength)
{
    const std::vector<std::uint8_t> password = {'p'};
    EXPECT_THROW(pbkdf2_hmac(HashFunction::sha256, password, password, 0, 32), std::invalid_argument);
    EXPECT_THROW(pbkdf2_hmac(HashFunction::sha256, password, password, 1, 0), std::invalid_argument);
}

TEST(AfSplitVectors, MatchPythonReimplementation)
{
    const auto vectors = read_vectors("af_split.txt");
    ASSERT_EQ(vectors.size(), 9u);
    for (const auto& vector : vectors) {
        SCOPED_TRACE(vector.description);
        const HashFunction hash = hash_named(vector.at("Hash"));
        const auto stripes = static_cast<std::uint32_t>(std::stoul(vector.at("Stripes")));
        const auto key = from_hex(vector.at("Key"));
        const auto random = from_hex(vector.at("Random"));
        const auto split = from_hex(vector.at("Split"));

        const SecureBytes material = af_split(key, stripes, hash, random);
        EXPECT_EQ(std::vector<std::uint8_t>(material.begin(), material.end()), split);
        const SecureBytes merged = af_merge(split, key.size(), stripes, hash);
        EXPECT_EQ(std::vector<std::uint8_t>(merged.begin(), merged.end()), key);
    }
}

TEST(AfSplit, RandomSplitMergesBack)
{
    const std::vector<std::uint8_t> key(64, 0x5a);
    const SecureBytes material = af_split(key, 4000, HashFunction::sha256);
    ASSERT_EQ(material.size(), 64u * 4000);
    const SecureBytes merged = af_merge(material, key.size(), 4000, HashFunction::sha256);
    EXPECT_EQ(std::vector<std::uint8_t>(merged.begin(), merged.end()), key);

    // Changing one byte of any stripe changes the merged key.
    SecureBytes damaged = material;
    damaged[1234] ^= 1;
    const SecureBytes wrong = af_merge(damaged, key.size(), 4000, HashFunction::sha256);
    EXPECT_NE(std::vector<std::uint8_t>(wrong.begin(), wrong.end()), key);
}

TEST(AfSplit, RejectsBadSizes)
{
    const std::vector<std::uint8_t> key(32, 1);
    const std::vector<std::uint8_t> random(32 * 2, 2);
    EXPECT_THROW(af_split(key, 0, HashFunction::sha256, random), std::invalid_argument);
    EXPECT_THROW(af_split(key, 4, HashFunction::sha256, random), std::invalid_argument);
    EXPECT_THROW(af_split({}, 3, HashFunction::sha256, random), std::invalid_argument);
    EXPECT_THROW(af_merge(random, 32, 3, HashFunction::sha256), std::invalid_argument);
    EXPECT_THROW(af_merge(random, 0, 2, HashFunction::sha256), std::invalid_argument);
}

TEST(AesCbcPlain64Vectors, MatchPythonCryptography)
{
    const auto vectors = read_vectors("aes_cbc_plain64.txt");
    ASSERT_EQ(vectors.size(), 5u);
    for (const auto& vector : vectors) {
        SCOPED_TRACE(vector.description);
        const auto password = from_hex(vector.at("Password"));
        const std::uint64_t first_sector = std::stoull(vector.at("FirstSector"));
        const auto plaintext = from_hex(vector.at("Plaintext"));
        const auto ciphertext = from_hex(vector.at("Ciphertext"));

        const AesCbcPlain64 cipher(legacy_qcow_key(password));
        auto data = ciphertext;
        cipher.decrypt_units(data, first_sector);
        EXPECT_EQ(data, plaintext) << "all sectors in one call";

        auto encrypted = plaintext;
        cipher.encrypt_units(encrypted, first_sector);
        EXPECT_EQ(encrypted, ciphertext) << "encryption of the plaintext";

        for (std::size_t i = 0; i < data.size() / legacy_qcow_sector_size; ++i) {
            const auto offset = static_cast<std::ptrdiff_t>(i * legacy_qcow_sector_size);
            std::vector<std::uint8_t> sector(ciphertext.begin() + offset,
                                             ciphertext.begin() + offset + legacy_qcow_sector_size);
            cipher.decrypt_units(sector, first_sector + i);
            EXPECT_TRUE(std::equal(sector.begin(), sector.end(), plaintext.begin() + offset)) << "sector " << i;
        }
    }
}

TEST(AesCbcPlain64, DecryptsAcrossBatches)
{
    // 200 sectors span several internal batches. Decrypting in one call or per sector must agree.
    std::vector<std::uint8_t> data(200 * legacy_qcow_sector_size);
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<std::uint8_t>(i * 7 + 3);
    const AesCbcPlain64 cipher(legacy_qcow_key(std::vector<std::uint8_t>{'k', 'e', 'y'}));
    auto whole = data;
    cipher.decrypt_units(whole, 40);
    for (std::size_t i = 0; i < 200; ++i) {
        std::vector<std::uint8_t> sector(data.begin() + static_cast<std::ptrdiff_t>(i * 512),
                                         data.begin() + static_cast<std::ptrdiff_t>((i + 1) * 512));
        cipher.decrypt_units(sector, 40 + i);
        ASSERT_TRUE(std::equal(sector.begin(), sector.end(), whole.begin() + static_cast<std::ptrdiff_t>(i * 512)))
            << "sector " << i;
    }
}

TEST(UnitCipherFactory, MakesCipherOfRecordName)
{
    std::vector<std::uint8_t> key(16, 7);
    std::vector<std::uint8_t> data(1024, 0x5a);
    auto cbc = make_unit_cipher(cipher_aes_cbc_plain64, key);
    auto expected = data;
    AesCbcPlain64(key).encrypt_units(expected, 9);
    cbc->encrypt_units(data, 9);
    EXPECT_EQ(data, expected);
    EXPECT_EQ(unit_cipher_key_size(cipher_aes_cbc_plain64), 16u);
    EXPECT_EQ(unit_cipher_key_size(cipher_aes_xts_plain64), 64u);
    EXPECT_THROW(make_unit_cipher(cipher_aes_xts_plain64, key), BadKeyLength);
    EXPECT_THROW(make_unit_cipher("aes-ecb", key), UnsupportedInput);
}

TEST(AesCbcPlain64, RejectsBadInput)
{
    EXPECT_THROW(AesCbcPlain64(std::vector<std::uint8_t>(32, 1)), BadKeyLength);
    const AesCbcPlain64 cipher(legacy_qcow_key(std::vector<std::uint8_t>{'k'}));
    std::vector<std::uint8_t> partial(500);
    EXPECT_THROW(cipher.decrypt_units(partial, 0), std::invalid_argument);
    std::vector<std::uint8_t> two(1024);
    EXPECT_THROW(cipher.decrypt_units(two, ~std::uint64_t{0}), std::invalid_argument);
    EXPECT_THROW(cipher.encrypt_units(partial, 0), std::invalid_argument);
    EXPECT_THROW(cipher.encrypt_units(two, ~std::uint64_t{0}), std::invalid_argument);
}

TEST(LegacyQcowKey, PadsAndTruncatesPassword)
{
    const std::string short_password = "PASS";
    const SecureBytes padded = legacy_qcow_key(std::vector<std::uint8_t>(short_password.begin(), short_password.end()));
    const std::vector<std::uint8_t> expected_padded = {'P', 'A', 'S', 'S', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    EXPECT_EQ(std::vector<std::uint8_t>(padded.begin(), padded.end()), expected_padded);

    const std::string long_password = "0123456789abcdefXYZ";
    const SecureBytes truncated = legacy_qcow_key(std::vector<std::uint8_t>(long_password.begin(), long_password.end()));
    EXPECT_EQ(std::string(truncated.begin(), truncated.end()), "0123456789abcdef");
}

}  // namespace
}  // namespace vmcrypt
