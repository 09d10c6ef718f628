// Interop of the LUKS1 header code and the legacy AES decryptor with real peers: cryptsetup 2.6 accepts
// and unlocks an area built by build_luks_area and shows the same master key; qemu-img/qemu-io 7.2 make
// LUKS and legacy AES qcow2 images whose headers vmcrypt parses and unlocks and whose clusters it
// decrypts to what QEMU wrote; QEMU opens an image whose area vmcrypt built; libqcow (pyqcow) reads the
// same legacy AES data. The qcow2 structures are walked here with a few lines of test code, independent
// of formats/qcow2.

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/crypto/random.hpp"
#include "core/crypto/xts.hpp"
#include "core/error.hpp"
#include "formats/qcow2/luks1_header.hpp"
#include "formats/qcow2/qemu_secret.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <vector>

namespace vmcrypt::qcow2 {
namespace {

namespace fs = std::filesystem;

constexpr const char* python = "/usr/bin/python3";

struct CommandResult {
    int status = -1;
    std::string output;  // stdout and stderr
};

CommandResult run(const std::string& command)
{
    CommandResult result;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr)
        return result;
    char buffer[4096];
    std::size_t length;
    while ((length = fread(buffer, 1, sizeof buffer, pipe)) > 0)
        result.output.append(buffer, length);
    const int status = pclose(pipe);
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

// Creates a LUKS qcow2 with qemu-img. QEMU 7.2 times PBKDF2 on the thread's CPU clock to choose the
// iteration counts, and on a loaded machine that measurement fails about half the time with "Unable to get
// accurate CPU usage" (seen with iter-time 10 and 100 while other builds ran), so that failure is retried.
CommandResult create_luks_qcow2(const std::string& secret_object, const std::string& image, const std::string& size)
{
    CommandResult result;
    for (int attempt = 0; attempt < 10; ++attempt) {
        result = run("qemu-img create -q -f qcow2 " + secret_object +
                     " -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 " + image + " " + size);
        if (result.output.find("Unable to get accurate CPU usage") == std::string::npos)
            break;
    }
    return result;
}

std::vector<std::uint8_t> read_file(const fs::path& path, std::uint64_t offset = 0, std::size_t length = 0)
{
    std::ifstream input(path, std::ios::binary);
    if (length == 0) {
        return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(input), {});
    }
    std::vector<std::uint8_t> bytes(length);
    input.seekg(static_cast<std::streamoff>(offset));
    input.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(length));
    if (input.gcount() != static_cast<std::streamsize>(length))
        throw std::runtime_error(path.string() + ": short read at " + std::to_string(offset));
    return bytes;
}

void write_file(const fs::path& path, std::span<const std::uint8_t> bytes, std::uint64_t offset = 0)
{
    std::fstream output(path, std::ios::binary | std::ios::in | std::ios::out);
    if (!output) {
        output.open(path, std::ios::binary | std::ios::out);
    }
    output.seekp(static_cast<std::streamoff>(offset));
    output.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(output.good()) << path;
}

void write_text(const fs::path& path, const std::string& text)
{
    std::ofstream(path, std::ios::binary) << text;
}

std::uint64_t load_be(std::span<const std::uint8_t> bytes, std::size_t offset, std::size_t size)
{
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < size; ++i)
        value = (value << 8) | bytes[offset + i];
    return value;
}

// The few qcow2 header fields the tests need, read straight from the file.
struct Qcow2Facts {
    std::uint32_t cluster_bits = 0;
    std::uint32_t crypt_method = 0;
    std::uint64_t l1_table_offset = 0;
    std::uint64_t fde_offset = 0;  // 0 when there is no FDE extension
    std::uint64_t fde_length = 0;
};

Qcow2Facts read_qcow2(const fs::path& image)
{
    const auto header = read_file(image, 0, 4096);
    Qcow2Facts facts;
    facts.cluster_bits = static_cast<std::uint32_t>(load_be(header, 20, 4));
    facts.crypt_method = static_cast<std::uint32_t>(load_be(header, 32, 4));
    facts.l1_table_offset = load_be(header, 40, 8);
    const std::uint64_t version = load_be(header, 4, 4);
    std::size_t offset = version >= 3 ? load_be(header, 100, 4) : 72;
    while (offset + 8 <= header.size()) {
        const std::uint64_t type = load_be(header, offset, 4);
        const std::uint64_t length = load_be(header, offset + 4, 4);
        if (type == 0)
            break;
        if (type == 0x0537be77 && length == 16) {
            facts.fde_offset = load_be(header, offset + 8, 8);
            facts.fde_length = load_be(header, offset + 16, 8);
        }
        offset += 8 + ((length + 7) & ~std::uint64_t{7});
    }
    return facts;
}

// The host offset of the cluster that holds guest offset `guest` (standard L2 entries only), or 0.
std::uint64_t host_cluster(const fs::path& image, const Qcow2Facts& facts, std::uint64_t guest)
{
    constexpr std::uint64_t offset_mask = 0x00fffffffffffe00;
    const std::uint64_t cluster_size = std::uint64_t{1} << facts.cluster_bits;
    const std::uint64_t l2_entries = cluster_size / 8;
    const std::uint64_t cluster_index = guest / cluster_size;
    const auto l1_entry = read_file(image, facts.l1_table_offset + 8 * (cluster_index / l2_entries), 8);
    const std::uint64_t l2_offset = load_be(l1_entry, 0, 8) & offset_mask;
    if (l2_offset == 0)
        return 0;
    const auto l2_entry = read_file(image, l2_offset + 8 * (cluster_index % l2_entries), 8);
    return load_be(l2_entry, 0, 8) & offset_mask;
}

class LuksInteropTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        char pattern[] = "/tmp/vmcrypt-luks-interop-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        dir_ = pattern;
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    // `--object secret,...` reading the passphrase from a file, so it never appears in argv.
    std::string secret_object(const std::string& passphrase_file) const
    {
        return "--object secret,id=sec0,file=" + path(passphrase_file);
    }

    fs::path dir_;
};

std::vector<std::uint8_t> bytes_of(const std::string& text)
{
    return std::vector<std::uint8_t>(text.begin(), text.end());
}

// The hex digits of cryptsetup's "MK dump:" output (two lines of space-separated bytes), or "".
std::string dumped_master_key(const std::string& output)
{
    const auto start = output.find("MK dump:");
    if (start == std::string::npos)
        return "";
    std::string hex;
    for (std::size_t i = start + 8; i < output.size() && hex.size() < 128; ++i) {
        if (std::isxdigit(static_cast<unsigned char>(output[i])))
            hex += output[i];
    }
    return hex;
}

std::string hex_of(std::span<const std::uint8_t> bytes)
{
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex;
    for (const std::uint8_t byte : bytes) {
        hex += digits[byte >> 4];
        hex += digits[byte & 0xf];
    }
    return hex;
}

TEST_F(LuksInteropTest, CryptsetupAcceptsBuiltArea)
{
    const SecureBytes master_key = random_bytes(luks_master_key_size);
    const std::string secret = "0123456789abcdef-secret";
    const auto area = build_luks_area(master_key, bytes_of(secret));
    write_file(path("area.bin"), area);
    write_text(path("secret"), secret);
    write_text(path("wrong"), secret + "x");

    const auto dump = run("cryptsetup luksDump " + path("area.bin"));
    ASSERT_EQ(dump.status, 0) << dump.output;
    EXPECT_NE(dump.output.find("Version:       \t1"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("aes"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("xts-plain64"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("sha256"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("4040"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("MK bits:       \t512"), std::string::npos) << dump.output;

    const auto opened = run("cryptsetup open --test-passphrase --key-file " + path("secret") + " " + path("area.bin"));
    EXPECT_EQ(opened.status, 0) << opened.output;
    const auto refused = run("cryptsetup open --test-passphrase --key-file " + path("wrong") + " " + path("area.bin"));
    EXPECT_EQ(refused.status, 2) << refused.output;

    const auto key_dump =
        run("cryptsetup luksDump -q --dump-master-key --key-file " + path("secret") + " " + path("area.bin"));
    ASSERT_EQ(key_dump.status, 0) << key_dump.output;
    EXPECT_EQ(dumped_master_key(key_dump.output), hex_of(master_key));
}

TEST_F(LuksInteropTest, CryptsetupAreaParsesAndUnlocks)
{
    // cryptsetup's own LUKS1 headers with QEMU's payload offset, as in a qcow2 FDE area, for each hash
    // vmcrypt reads; the unlocked master key must be the one cryptsetup dumps.
    write_text(path("pass"), "cryptsetup pass");
    for (const std::string hash : {"sha256", "sha1", "sha512"}) {
        SCOPED_TRACE(hash);
        const auto area_file = path(hash + ".bin");
        const auto created = run("truncate -s 2068480 " + area_file + " && cryptsetup luksFormat -q --type luks1 "
                                 "--cipher aes-xts-plain64 --key-size 512 --hash " + hash +
                                 " --pbkdf-force-iterations 1000 --align-payload 4040 --key-file " + path("pass") +
                                 " " + area_file);
        ASSERT_EQ(created.status, 0) << created.output;
        const auto dump = run("cryptsetup luksDump -q --dump-master-key --key-file " + path("pass") + " " + area_file);
        ASSERT_EQ(dump.status, 0) << dump.output;

        const auto area = read_file(area_file);
        const LuksHeader header = parse_luks_header(area, area_file);
        EXPECT_EQ(header.payload_offset, 4040u);
        EXPECT_EQ(header.hash_spec, hash);
        const SecureBytes master_key = unlock_luks(header, area, bytes_of("cryptsetup pass"), area_file);
        EXPECT_EQ(hex_of(master_key), dumped_master_key(dump.output));
        EXPECT_THROW(unlock_luks(header, area, bytes_of("cryptsetup pasS"), area_file), WrongKey);
    }
}

TEST_F(LuksInteropTest, QemuLuksImageUnlocksAndDecrypts)
{
    write_text(path("pw"), "PASS");
    const auto source = random_bytes(131072);
    write_file(path("data"), source);
    const std::string image = path("x.qcow2");
    const std::string secret = secret_object("pw");
    const auto created = create_luks_qcow2(secret, image, "8M");
    ASSERT_EQ(created.status, 0) << created.output;
    // Guest 3 MiB, so the host offset differs from the guest offset.
    const auto written = run("qemu-io " + secret + " --image-opts driver=qcow2,file.filename=" + image +
                             ",encrypt.key-secret=sec0 -c 'write -s " + path("data") + " 3M 128k'");
    ASSERT_EQ(written.status, 0) << written.output;

    const Qcow2Facts facts = read_qcow2(image);
    ASSERT_EQ(facts.crypt_method, 2u);
    ASSERT_NE(facts.fde_offset, 0u) << "no FDE header extension";
    EXPECT_EQ(facts.fde_length, luks_area_length());

    const auto area = read_file(image, facts.fde_offset, facts.fde_length);
    const LuksHeader header = parse_luks_header(area, image);
    EXPECT_EQ(header.active_slot_count(), 1u);
    const SecureBytes master_key = unlock_luks(header, area, bytes_of("PASS"), image);
    EXPECT_THROW(unlock_luks(header, area, bytes_of("PASs"), image), WrongKey);

    const XtsCipher cipher(master_key);
    for (std::uint64_t cluster = 0; cluster < 2; ++cluster) {
        SCOPED_TRACE("cluster " + std::to_string(cluster));
        const std::uint64_t guest = 3 * 1024 * 1024 + cluster * 65536;
        const std::uint64_t host = host_cluster(image, facts, guest);
        ASSERT_NE(host, 0u);
        ASSERT_NE(host, guest);
        auto data = read_file(image, host, 65536);
        cipher.decrypt_units(data, host / 512);
        EXPECT_TRUE(std::equal(data.begin(), data.end(), source.begin() + static_cast<std::ptrdiff_t>(cluster * 65536)))
            << "tweak = host offset / 512";
    }
}

TEST_F(LuksInteropTest, QemuOpensAddedKeySlot)
{
    // A QEMU image keeps its passphrase slot and gains a slot for the derived secret.
    write_text(path("pw"), "PASS");
    const std::string image = path("z.qcow2");
    const auto created = create_luks_qcow2(secret_object("pw"), image, "4M");
    ASSERT_EQ(created.status, 0) << created.output;
    const Qcow2Facts facts = read_qcow2(image);
    auto area = read_file(image, facts.fde_offset, facts.fde_length);
    const LuksHeader header = parse_luks_header(area, image);
    const SecureBytes master_key = unlock_luks(header, area, bytes_of("PASS"), image);

    const SecureBytes secret = derive_qemu_secret(master_key);
    EXPECT_EQ(add_luks_key_slot(area, header, master_key, secret, luks_min_iterations, image), 1u);
    write_file(image, area, facts.fde_offset);
    write_text(path("secret"), std::string(secret.begin(), secret.end()));

    for (const char* file : {"pw", "secret"}) {
        SCOPED_TRACE(file);
        const auto opened = run("qemu-io " + secret_object(file) + " --image-opts driver=qcow2,file.filename=" + image +
                                ",encrypt.key-secret=sec0 -c 'write -P 0x5a 0 4k' -c 'read -P 0x5a 0 4k'");
        EXPECT_EQ(opened.status, 0) << opened.output;
        EXPECT_EQ(opened.output.find("Pattern verification failed"), std::string::npos) << opened.output;
    }
    write_file(path("area.bin"), area);
    const auto cryptsetup = run("cryptsetup open --test-passphrase --key-slot 1 --key-file " + path("secret") + " " +
                                path("area.bin"));
    EXPECT_EQ(cryptsetup.status, 0) << cryptsetup.output;
}

TEST_F(LuksInteropTest, QemuOpensBuiltArea)
{
    // A fresh QEMU LUKS image whose FDE area is replaced by one built for a known master key with the
    // derived secret: QEMU must unlock it with the secret in both printed forms, and encrypt with that
    // master key.
    write_text(path("pw"), "PASS");
    const std::string image = path("y.qcow2");
    const auto created = create_luks_qcow2(secret_object("pw"), image, "4M");
    ASSERT_EQ(created.status, 0) << created.output;
    const Qcow2Facts facts = read_qcow2(image);
    ASSERT_EQ(facts.fde_length, luks_area_length());

    const SecureBytes master_key = random_bytes(luks_master_key_size);
    const SecureBytes secret = derive_qemu_secret(master_key);
    write_file(image, build_luks_area(master_key, secret), facts.fde_offset);

    // The --object argument exactly as qemu_secret_object prints it.
    const SecureBytes object = qemu_secret_object(secret, "sec0");
    const std::string open = "qemu-io --object " + std::string(object.begin(), object.end()) +
                             " --image-opts driver=qcow2,file.filename=" + image + ",encrypt.key-secret=sec0";
    const auto source = random_bytes(65536);
    write_file(path("data"), source);
    const auto written = run(open + " -c 'write -s " + path("data") + " 1M 64k'");
    ASSERT_EQ(written.status, 0) << written.output;

    // The libvirt value is base64 of the secret text, which QEMU also takes with format=base64.
    const SecureBytes value = libvirt_secret_value(secret);
    const auto read_back = run("qemu-io --object secret,id=sec0,format=base64,data=" +
                               std::string(value.begin(), value.end()) + " --image-opts driver=qcow2,file.filename=" +
                               image + ",encrypt.key-secret=sec0 -c 'read -v 1M 16'");
    ASSERT_EQ(read_back.status, 0) << read_back.output;
    EXPECT_EQ(read_back.output.find("Invalid password"), std::string::npos) << read_back.output;

    const auto refused = run("qemu-io " + secret_object("pw") + " --image-opts driver=qcow2,file.filename=" + image +
                             ",encrypt.key-secret=sec0 -c 'read 0 512'");
    EXPECT_NE(refused.status, 0) << "the old passphrase still opens the image";
    EXPECT_NE(refused.output.find("Invalid password"), std::string::npos) << refused.output;

    const std::uint64_t host = host_cluster(image, facts, 1024 * 1024);
    ASSERT_NE(host, 0u);
    auto data = read_file(image, host, 65536);
    XtsCipher(master_key).decrypt_units(data, host / 512);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), source.begin()));

    write_text(path("secret"), std::string(secret.begin(), secret.end()));
    const auto check = run("qemu-img check " + secret_object("secret") + " --image-opts driver=qcow2,file.filename=" +
                           image + ",encrypt.key-secret=sec0");
    EXPECT_EQ(check.status, 0) << check.output;
}

TEST_F(LuksInteropTest, LegacyAesMatchesQemuAndLibqcow)
{
    write_text(path("pw"), "PASS");
    const auto source = random_bytes(65536);
    write_file(path("data"), source);
    const std::string image = path("aes.qcow2");
    const std::string secret = secret_object("pw");
    const auto created = run("qemu-img create -q -f qcow2 " + secret +
                             " -o encrypt.format=aes,encrypt.key-secret=sec0 " + image + " 4M");
    ASSERT_EQ(created.status, 0) << created.output;
    const std::string open = "qemu-io " + secret + " --image-opts driver=qcow2,file.filename=" + image +
                             ",encrypt.key-secret=sec0";
    const auto written = run(open + " -c 'write -s " + path("data") + " 2M 64k'");
    ASSERT_EQ(written.status, 0) << written.output;

    const Qcow2Facts facts = read_qcow2(image);
    ASSERT_EQ(facts.crypt_method, 1u);
    const std::uint64_t guest = 2 * 1024 * 1024;
    const std::uint64_t host = host_cluster(image, facts, guest);
    ASSERT_NE(host, 0u);
    ASSERT_NE(host, guest);

    // IV = guest sector. Decrypting with the host sector must not give the data.
    const AesCbcPlain64 cipher(legacy_qcow_key(bytes_of("PASS")));
    const auto ciphertext = read_file(image, host, 65536);
    auto data = ciphertext;
    cipher.decrypt_units(data, guest / 512);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), source.begin())) << "IV = guest offset / 512";
    auto wrong = ciphertext;
    cipher.decrypt_units(wrong, host / 512);
    EXPECT_FALSE(std::equal(wrong.begin(), wrong.end(), source.begin()));

    // What QEMU reads back.
    const auto qemu_read = run("qemu-img convert " + secret + " --image-opts driver=qcow2,file.filename=" + image +
                               ",encrypt.key-secret=sec0 -O raw " + path("plain.raw"));
    ASSERT_EQ(qemu_read.status, 0) << qemu_read.output;
    const auto qemu_data = read_file(path("plain.raw"), guest, 65536);
    EXPECT_EQ(qemu_data, data);

    // What libqcow reads with the password.
    const auto libqcow = run(std::string(python) +
                             " -c \"import pyqcow, sys; f = pyqcow.file(); f.set_password(open(sys.argv[1]).read()); "
                             "f.open(sys.argv[2]); open(sys.argv[3], 'wb').write(f.read_buffer_at_offset(65536, " +
                             std::to_string(guest) + "))\" " + path("pw") + " " + image + " " + path("libqcow.bin"));
    ASSERT_EQ(libqcow.status, 0) << libqcow.output;
    EXPECT_EQ(read_file(path("libqcow.bin")), data);
}

}  // namespace
}  // namespace vmcrypt::qcow2
