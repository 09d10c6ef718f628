// Malformed and refused qcow2 images: each must fail to open read-write with a one-line error that
// names the file and the field, and leave the file byte for byte unchanged. Each case starts from a
// real qemu-img 7.2 image and damages one field.

#include "core/error.hpp"
#include "formats/open_disk.hpp"
#include "test_vmdk_support.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

using namespace vmcrypt;
using namespace vmcrypt::test;

namespace {

// Overwrites `size` bytes at `offset` with `value`, big-endian as qcow2 stores integers.
void patch_be(const std::filesystem::path& path, std::uint64_t offset, std::uint64_t value, int size)
{
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    if (!file)
        throw std::runtime_error("cannot open " + path.string());
    file.seekp(static_cast<std::streamoff>(offset));
    for (int i = size - 1; i >= 0; --i) {
        char byte = static_cast<char>((value >> (8 * i)) & 0xff);
        file.write(&byte, 1);
    }
    if (!file)
        throw std::runtime_error("cannot patch " + path.string());
}

std::uint64_t read_be(const std::filesystem::path& path, std::uint64_t offset, int size)
{
    std::string bytes = read_file(path);
    std::uint64_t value = 0;
    for (int i = 0; i < size; ++i)
        value = (value << 8) | static_cast<unsigned char>(bytes.at(offset + i));
    return value;
}

// A 16 MiB qcow2 image with 1 MiB of 0xaa data at guest offset 0, made with the extra -o options.
std::filesystem::path make_image(const TempFolder& folder, const std::string& options = "")
{
    std::filesystem::path path = folder / "d.qcow2";
    run_command("qemu-img create -q -f qcow2 " + (options.empty() ? "" : "-o " + options + " ") + shell_quote(path) +
                " 16M");
    run_command("qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' " + shell_quote(path));
    return path;
}

// The file offset of the first L2 table, from L1 entry 0.
std::uint64_t first_l2_table(const std::filesystem::path& path)
{
    std::uint64_t l1 = read_be(path, 40, 8);
    return read_be(path, l1, 8) & 0x00fffffffffffe00;
}

// Offset of the first header extension of a version 3 image (after header_length bytes).
std::uint64_t first_extension(const std::filesystem::path& path)
{
    return read_be(path, 100, 4);
}

enum class Expected { invalid, unsupported };

struct MalformedImage {
    std::string name;
    std::function<std::filesystem::path(const TempFolder&)> build;
    Expected expected;
    std::string message_part;
};

std::vector<MalformedImage> malformed_images()
{
    return {
        {"cluster_bits above 21",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 20, 30, 4);
             return path;
         },
         Expected::invalid, "cluster_bits 30 is out of range"},
        {"cluster_bits below 9",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 20, 8, 4);
             return path;
         },
         Expected::invalid, "cluster_bits 8 is out of range"},
        {"L1 table too large",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 36, 0x1000000, 4);
             return path;
         },
         Expected::invalid, "l1_size 16777216 entries is larger than QEMU's limit"},
        {"L1 table too small for the size",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 24, 1ull << 40, 8);
             return path;
         },
         Expected::invalid, "l1_size 1 entries is too small"},
        {"L1 table offset unaligned",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 40, read_be(path, 40, 8) + 512, 8);
             return path;
         },
         Expected::invalid, "l1_table_offset"},
        {"extension running past cluster 0",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, first_extension(path) + 4, 0xffffffff, 4);
             return path;
         },
         Expected::invalid, "runs past the end of cluster 0"},
        {"refcount table overlapping the header",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 48, 0, 8);
             return path;
         },
         Expected::invalid, "refcount_table_offset is 0, which overlaps the header"},
        {"L2 entry with reserved bits",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t entry = first_l2_table(path);
             patch_be(path, entry, read_be(path, entry, 8) | (1ull << 56), 8);
             return path;
         },
         Expected::invalid, "L2 table 0 entry 0"},
        {"compressed entry past the end of the file",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t entry = first_l2_table(path);
             patch_be(path, entry, (1ull << 62) | 0x3fffff00ull, 8);
             return path;
         },
         Expected::invalid, "compressed data at 0x3fffff00 is outside the file"},
        {"crypt method 2 without the crypto extension",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 32, 2, 4);
             return path;
         },
         Expected::invalid, "crypto header extension (0x0537be77)"},
        {"crypto extension on a plain image",
         [](const TempFolder& f) {
             auto path = make_image(f);
             // Turn the feature name table into a 16-byte crypto extension pointing at cluster 1.
             std::uint64_t extension = first_extension(path);
             patch_be(path, extension, 0x0537be77, 4);
             patch_be(path, extension + 4, 16, 4);
             patch_be(path, extension + 8, 0x10000, 8);
             patch_be(path, extension + 16, 0x1000, 8);
             patch_be(path, extension + 24, 0, 8);
             return path;
         },
         Expected::invalid, "crypto extension (0x0537be77) is present but crypt_method is 0"},
        {"next LUKS area extension outside a deep rekey",
         [](const TempFolder& f) {
             auto path = make_image(f);
             // Turn the feature name table into vmcrypt's 16-byte next LUKS area extension.
             std::uint64_t extension = first_extension(path);
             patch_be(path, extension, 0x766d636e, 4);
             patch_be(path, extension + 4, 16, 4);
             patch_be(path, extension + 8, 0x10000, 8);
             patch_be(path, extension + 16, 0x1000, 8);
             patch_be(path, extension + 24, 0, 8);
             return path;
         },
         Expected::invalid, "next LUKS area extension (0x766d636e) is present but the image is not in the middle"},
        {"snapshot entry with oversized extra data",
         [](const TempFolder& f) {
             auto path = make_image(f);
             run_command("qemu-img snapshot -c first " + shell_quote(path));
             patch_be(path, read_be(path, 64, 8) + 36, 4096, 4);
             return path;
         },
         Expected::invalid, "extra_data_size 4096 is larger than QEMU's limit"},
        {"version 4",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 4, 4, 4);
             return path;
         },
         Expected::unsupported, "version 4 is not supported"},
        {"header_length below 104",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 100, 96, 4);
             return path;
         },
         Expected::invalid, "header_length 96"},
        {"refcount_order 7",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 96, 7, 4);
             return path;
         },
         Expected::invalid, "refcount_order 7"},
        {"unknown crypt method",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 32, 3, 4);
             return path;
         },
         Expected::unsupported, "crypt_method 3 is not supported"},
        {"compression type bit without zstd",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 72, 1ull << 3, 8);
             return path;
         },
         Expected::invalid, "compression_type 0 disagrees with incompatible feature bit 3"},
        {"L1 entry with reserved bits",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t l1 = read_be(path, 40, 8);
             patch_be(path, l1, read_be(path, l1, 8) | 1, 8);
             return path;
         },
         Expected::invalid, "L1 entry 0"},
        {"L2 table past the end of the file",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, read_be(path, 40, 8), (1ull << 63) | (1ull << 40), 8);
             return path;
         },
         Expected::invalid, "L2 table at 0x10000000000 is past the end of the file"},
        {"data cluster unaligned",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t entry = first_l2_table(path);
             patch_be(path, entry, read_be(path, entry, 8) + 512, 8);
             return path;
         },
         Expected::invalid, "is not cluster-aligned"},
        {"refcount table entry with reserved bits",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t table = read_be(path, 48, 8);
             patch_be(path, table, read_be(path, table, 8) | 1, 8);
             return path;
         },
         Expected::invalid, "refcount table entry 0"},
        {"used cluster with refcount 0",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t block = read_be(path, read_be(path, 48, 8), 8);
             std::uint64_t data_cluster = (read_be(path, first_l2_table(path), 8) & 0x00fffffffffffe00) >> 16;
             patch_be(path, block + data_cluster * 2, 0, 2);
             return path;
         },
         Expected::invalid, "refcount of cluster"},
        {"subcluster allocated and zero",
         [](const TempFolder& f) {
             auto path = make_image(f, "extended_l2=on");
             std::uint64_t entry = first_l2_table(path);
             patch_be(path, entry + 8, read_be(path, entry + 8, 8) | (1ull << 32), 8);
             return path;
         },
         Expected::invalid, "both allocated and zero"},
        {"backing file name too long",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 8, 0x200, 8);
             patch_be(path, 16, 2000, 4);
             return path;
         },
         Expected::invalid, "backing_file_size 2000"},
        {"backing file offset that wraps past 2^64",
         // Found by fuzz_qcow2_header: offset + size overflowed and passed the cluster 0 bound.
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 8, 0xffffffffffffff48, 8);
             patch_be(path, 16, 0x200, 4);
             return path;
         },
         Expected::invalid, "backing_file_offset 0xffffffffffffff48"},
        {"unknown incompatible feature",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 72, 1ull << 20, 8);
             return path;
         },
         Expected::unsupported, "unknown incompatible features: bit 20"},
        {"too many snapshots",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 60, 70000, 4);
             return path;
         },
         Expected::invalid, "nb_snapshots 70000"},
        {"L1 table overlapping the refcount table",
         [](const TempFolder& f) {
             auto path = make_image(f);
             patch_be(path, 40, read_be(path, 48, 8), 8);
             return path;
         },
         Expected::invalid, "overlaps the refcount table"},
        {"two L2 entries sharing a cluster",
         [](const TempFolder& f) {
             auto path = make_image(f);
             std::uint64_t entry = first_l2_table(path);
             patch_be(path, entry + 8, read_be(path, entry, 8), 8);
             return path;
         },
         Expected::invalid, "which other metadata or data already uses"},
        {"record pointer without crypto extension",
         [](const TempFolder& f) {
             auto path = make_image(f, "cluster_size=512");
             const std::uint64_t at = first_extension(path);
             patch_be(path, at, 0x766d7270, 4);  // vmcrypt record pointer
             patch_be(path, at + 4, 16, 4);
             patch_be(path, at + 8, 0x600, 8);
             patch_be(path, at + 16, 3072, 8);
             patch_be(path, at + 24, 0, 8);  // end marker
             return path;
         },
         Expected::invalid, "crypto header extension it points into is missing"},
        {"record pointer outside the LUKS area",
         [](const TempFolder& f) {
             auto path = make_image(f, "cluster_size=512");
             const std::uint64_t at = first_extension(path);
             patch_be(path, 32, 2, 4);  // crypt_method LUKS
             patch_be(path, at, 0x0537be77, 4);
             patch_be(path, at + 4, 16, 4);
             patch_be(path, at + 8, 0x400, 8);
             patch_be(path, at + 16, 512, 8);
             patch_be(path, at + 24, 0x766d7270, 4);
             patch_be(path, at + 28, 16, 4);
             patch_be(path, at + 32, 0x200, 8);
             patch_be(path, at + 40, 3072, 8);
             patch_be(path, at + 48, 0, 8);
             return path;
         },
         Expected::invalid, "is not sectors 2 to 7 of the LUKS area"},
        {"file shorter than a header",
         [](const TempFolder& f) {
             auto path = f / "short.qcow2";
             write_file(path, std::string("QFI\xfb\0\0\0\3", 8) + std::string(40, '\0'));
             return path;
         },
         Expected::invalid, "too short for a qcow2 header"},
    };
}

}  // namespace

TEST(Qcow2Malformed, RejectsAndLeavesFilesUnchanged)
{
    std::vector<MalformedImage> cases = malformed_images();
    ASSERT_GE(cases.size(), 15u);

    for (const MalformedImage& malformed : cases) {
        SCOPED_TRACE(malformed.name);
        TempFolder folder;
        std::filesystem::path path = malformed.build(folder);
        std::map<std::string, std::string> before = hash_folder(folder.path());

        std::string message;
        bool unsupported = false;
        try {
            open_disk(path, Access::read_write);
            ADD_FAILURE() << "opened without an error";
            continue;
        } catch (const UnsupportedInput& error) {
            message = error.what();
            unsupported = true;
        } catch (const InvalidInput& error) {
            message = error.what();
        }
        EXPECT_EQ(unsupported, malformed.expected == Expected::unsupported) << message;
        EXPECT_NE(message.find(malformed.message_part), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        EXPECT_EQ(message.rfind(path.string(), 0), 0u) << "message does not start with the file: " << message;
        EXPECT_EQ(hash_folder(folder.path()), before);
    }
}

// Images in a state vmcrypt must not rewrite: rejected before any write with a hint, but readable by
// inspect (a read-only open).
TEST(Qcow2Refusals, RejectsStateButInspectReads)
{
    struct Case {
        std::string name;
        std::function<void(const std::filesystem::path&)> damage;
        std::string message_part;
    };
    std::vector<Case> cases = {
        {"dirty bit", [](const std::filesystem::path& p) { patch_be(p, 72, 1, 8); }, "qemu-img check -r all"},
        {"corrupt bit", [](const std::filesystem::path& p) { patch_be(p, 72, 2, 8); }, "the corrupt bit is set"},
        {"internal snapshot", [](const std::filesystem::path& p) { run_command("qemu-img snapshot -c s1 " + shell_quote(p)); },
         "vmcrypt consolidate-snapshots"},
    };
    for (const Case& refusal : cases) {
        SCOPED_TRACE(refusal.name);
        TempFolder folder;
        std::filesystem::path path = make_image(folder);
        refusal.damage(path);
        std::map<std::string, std::string> before = hash_folder(folder.path());
        try {
            open_disk(path, Access::read_write);
            ADD_FAILURE() << "opened read-write without an error";
        } catch (const Error& error) {
            EXPECT_EQ(error.code(), ExitCode::invalid_input);
            EXPECT_NE(std::string(error.what()).find(refusal.message_part), std::string::npos) << error.what();
        }
        EXPECT_NO_THROW(open_disk(path, Access::read_only));
        EXPECT_EQ(hash_folder(folder.path()), before);
    }
}
