// Malformed and unsupported VMDK disks: each must fail to open read-write with a one-line
// InvalidInput or UnsupportedInput that names the field, and leave every file byte for byte unchanged.
// Each case starts from a real qemu-img 7.2 disk and damages one field.

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

// Header field offsets of a hosted sparse extent.
constexpr std::uint64_t version_field = 4;
constexpr std::uint64_t flags_field = 8;
constexpr std::uint64_t capacity_field = 12;
constexpr std::uint64_t grain_size_field = 20;
constexpr std::uint64_t descriptor_offset_field = 28;
constexpr std::uint64_t descriptor_size_field = 36;
constexpr std::uint64_t gtes_per_gt_field = 44;
constexpr std::uint64_t rgd_offset_field = 48;
constexpr std::uint64_t gd_offset_field = 56;
constexpr std::uint64_t newline_field = 73;

// A 10 MiB monolithicSparse disk with 1 MiB of data (grains 0 to 15) at folder/ms.vmdk.
std::filesystem::path make_sparse(const TempFolder& folder)
{
    std::filesystem::path path = folder / "ms.vmdk";
    run_command("qemu-img create -q -f vmdk " + shell_quote(path) + " 10M");
    run_command("qemu-io -f vmdk -c 'write -P 0xaa 0 1M' " + shell_quote(path));
    return path;
}

// A 10 MiB monolithicFlat disk with 1 MiB of data at folder/mf.vmdk and folder/mf-flat.vmdk.
std::filesystem::path make_flat(const TempFolder& folder)
{
    std::filesystem::path path = folder / "mf.vmdk";
    run_command("qemu-img create -q -f vmdk -o subformat=monolithicFlat " + shell_quote(path) + " 10M");
    run_command("qemu-io -f vmdk -c 'write -P 0xaa 0 1M' " + shell_quote(path));
    return path;
}

// A 10 MiB twoGbMaxExtentSparse disk at folder/tgs.vmdk with one extent, folder/tgs-s001.vmdk.
std::filesystem::path make_split_sparse(const TempFolder& folder)
{
    std::filesystem::path path = folder / "tgs.vmdk";
    run_command("qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse " + shell_quote(path) + " 10M");
    run_command("qemu-io -f vmdk -c 'write -P 0xaa 0 1M' " + shell_quote(path));
    return path;
}

// Replaces the first occurrence of `from` in a text descriptor, or in the embedded descriptor area of
// a sparse file when the replacement has the same length.
void edit_file(const std::filesystem::path& path, const std::string& from, const std::string& to)
{
    std::string bytes = read_file(path);
    std::size_t pos = bytes.find(from);
    if (pos == std::string::npos)
        throw std::runtime_error("\"" + from + "\" not found in " + path.string());
    bytes.replace(pos, from.size(), to);
    write_file(path, bytes);
}

std::uint64_t primary_grain_table(const std::filesystem::path& path)
{
    return read_le(path, read_le(path, gd_offset_field, 8) * 512, 4) * 512;
}

std::uint64_t redundant_grain_table(const std::filesystem::path& path)
{
    return read_le(path, read_le(path, rgd_offset_field, 8) * 512, 4) * 512;
}

enum class Expected { invalid, unsupported };

struct MalformedDisk {
    const char* name;
    // Builds the damaged disk in the folder and returns the path to open.
    std::function<std::filesystem::path(const TempFolder&)> build;
    Expected kind;
    std::string message_part;  // the field, and where it applies the file or line
};

std::vector<MalformedDisk> malformed_disks()
{
    return {
        {"truncated header",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             std::filesystem::resize_file(path, 300);
             return path;
         },
         Expected::invalid, "ms.vmdk: sparse header: file is 300 bytes"},
        {"truncated grains",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             std::filesystem::resize_file(path, 32768);
             return path;
         },
         Expected::invalid, "ms.vmdk: sparse header: overHead 128 sectors is past the end"},
        {"bad magic in a split extent",
         [](const TempFolder& f) {
             auto path = make_split_sparse(f);
             patch_le(f / "tgs-s001.vmdk", 0, 0x58444d4b, 4);
             return path;
         },
         Expected::invalid, "tgs-s001.vmdk: sparse header: magic"},
        {"grain size 0",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, grain_size_field, 0, 8);
             return path;
         },
         Expected::invalid, "sparse header: grainSize 0"},
        {"grain size huge",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, grain_size_field, 0x400000, 8);
             return path;
         },
         Expected::invalid, "sparse header: grainSize 4194304"},
        {"grain directory past the end of the file",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, gd_offset_field, 100000, 8);
             return path;
         },
         Expected::invalid, "sparse header: gdOffset region at sector 100000"},
        {"numGTEsPerGT not 512",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, gtes_per_gt_field, 1024, 4);
             return path;
         },
         Expected::invalid, "sparse header: numGTEsPerGT 1024"},
        {"capacity overflow",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, capacity_field, 1ull << 60, 8);
             return path;
         },
         Expected::invalid, "sparse header: capacity 1152921504606846976"},
        {"unknown incompatible flag",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, flags_field, 0x80003, 4);
             return path;
         },
         Expected::unsupported, "sparse header: flags 0x80003 set unknown incompatible flags 0x80000"},
        {"version 4",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, version_field, 4, 4);
             return path;
         },
         Expected::unsupported, "sparse header: version 4"},
        {"descriptorOffset past the end of the file",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, descriptor_offset_field, 1000000, 8);
             return path;
         },
         Expected::invalid, "sparse header: descriptorOffset region at sector 1000000"},
        {"newline detector damaged",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, newline_field + 2, '\n', 1);
             return path;
         },
         Expected::invalid, "sparse header: newline detector"},
        {"oversized embedded descriptor",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             std::string area = read_file(path).substr(512, 10240);
             std::string text = area.substr(0, area.find('\0')) + "# " + std::string(400, 'x') + "\n";
             std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
             file.seekp(512);
             file.write(text.data(), static_cast<std::streamsize>(text.size()));
             file.close();
             patch_le(path, descriptor_size_field, 1, 8);
             return path;
         },
         Expected::invalid, "ms.vmdk: descriptorSize: the embedded descriptor fills all 512 reserved bytes"},
        {"grain table entry past the end of the file",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, primary_grain_table(path) + 3 * 4, 0x100000, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain table entry 3 of GT 0 points past the end of the file"},
        {"grain table entry inside the metadata",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, primary_grain_table(path) + 2 * 4, 5, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain table entry 2 of GT 0 points to sector 5"},
        {"zeroed grain entry without the flag",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, primary_grain_table(path) + 20 * 4, 1, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain table entry 20 of GT 0 is 1 (zeroed grain)"},
        {"redundant grain table disagrees",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             std::uint64_t entry = redundant_grain_table(path) + 7 * 4;
             patch_le(path, entry, read_le(path, entry, 4) + 128, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain table entry 7 of GT 0 is "},
        {"redundant grain directory disagrees",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, read_le(path, rgd_offset_field, 8) * 512, 0, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain directory entry 0 is "},
        {"two grain table entries share a grain",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             for (std::uint64_t table : {primary_grain_table(path), redundant_grain_table(path)})
                 patch_le(path, table + 5 * 4, read_le(path, table + 4 * 4, 4), 4);
             return path;
         },
         Expected::invalid, "point to overlapping host sectors, which vmcrypt cannot rewrite in place; copy the disk "
                            "with: qemu-img convert -O vmdk -o subformat=monolithicSparse "},
        {"grain table past overHead",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             patch_le(path, read_le(path, gd_offset_field, 8) * 512, 200, 4);
             return path;
         },
         Expected::invalid, "ms.vmdk: grain directory entry 0: grain table at sector 200 ends past overHead"},
        {"extent sectors differ from the sparse header capacity",
         [](const TempFolder& f) {
             auto path = make_sparse(f);
             edit_file(path, "RW 20480 SPARSE", "RW 20000 SPARSE");
             return path;
         },
         Expected::invalid, "ms.vmdk: line 8: extent: sector count 20000 differs from the sparse header's capacity 20480"},
        {"split extent sectors differ from its header",
         [](const TempFolder& f) {
             auto path = make_split_sparse(f);
             edit_file(path, "RW 20480 SPARSE", "RW 40960 SPARSE");
             return path;
         },
         Expected::invalid, "tgs.vmdk: line 8: extent: sector count 40960 differs from the capacity 20480"},
        {"split extent opened on its own",
         [](const TempFolder& f) {
             make_split_sparse(f);
             return f / "tgs-s001.vmdk";
         },
         Expected::invalid, "tgs-s001.vmdk: embedded descriptor: empty"},
        {"missing extent file",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             std::filesystem::remove(f / "mf-flat.vmdk");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: file \"mf-flat.vmdk\" not found"},
        {"flat extent file too short",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             std::filesystem::resize_file(f / "mf-flat.vmdk", 1 << 20);
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: file \"mf-flat.vmdk\" is 1048576 bytes, shorter than"},
        {"extent file is the descriptor",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "\"mf-flat.vmdk\"", "\"mf.vmdk\"");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: file \"mf.vmdk\" is the descriptor file itself"},
        {"two extents in one file",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "RW 20480 FLAT \"mf-flat.vmdk\" 0\n",
                       "RW 10240 FLAT \"mf-flat.vmdk\" 0\nRW 10240 FLAT \"mf-flat.vmdk\" 10240\n");
             return path;
         },
         Expected::unsupported, "mf.vmdk: line 9: extent: file \"mf-flat.vmdk\" is also the file of line 8"},
        {"unknown extent type",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "RW 20480 FLAT", "RW 20480 FLOP");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: unknown extent type \"FLOP\""},
        {"extent type of another createType",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "RW 20480 FLAT \"mf-flat.vmdk\" 0", "RW 20480 SPARSE \"mf-flat.vmdk\"");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: type SPARSE does not belong to createType \"monolithicFlat\""},
        {"raw device extent type",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"", "createType=\"vmfs\"");
             edit_file(path, "RW 20480 FLAT \"mf-flat.vmdk\" 0", "RW 20480 VMFSRDM \"mf-flat.vmdk\"");
             return path;
         },
         Expected::unsupported, "mf.vmdk: line 8: extent: type VMFSRDM is not supported"},
        {"non-numeric extent size",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "RW 20480 FLAT", "RW 2048x FLAT");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: sector count \"2048x\" is not a number"},
        {"unquoted extent file name",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "\"mf-flat.vmdk\"", "mf-flat.vmdk");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 8: extent: file name mf-flat.vmdk is not in double quotes"},
        {"createType missing",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"\n", "");
             return path;
         },
         Expected::invalid, "mf.vmdk: createType: missing"},
        {"createType streamOptimized",
         [](const TempFolder& f) {
             auto path = f / "so.vmdk";
             run_command("qemu-img create -q -f vmdk -o subformat=streamOptimized " + shell_quote(path) + " 10M");
             return path;
         },
         Expected::unsupported, "so.vmdk: createType \"streamOptimized\" is not supported; its grains are compressed"},
        {"createType vmfsSparse",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"", "createType=\"vmfsSparse\"");
             return path;
         },
         Expected::unsupported, "mf.vmdk: createType \"vmfsSparse\" is not supported; it is a snapshot delta"},
        {"createType misspelt",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"", "createType=\"monolithicFlt\"");
             return path;
         },
         Expected::unsupported, "mf.vmdk: createType \"monolithicFlt\" in the descriptor is not a VMDK createType "
                                "that vmcrypt or qemu-img knows; correct the createType line to the type the disk was "
                                "made with, probably \"monolithicFlat\""},
        {"createType of a raw device",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"", "createType=\"vmfsRawDeviceMap\"");
             return path;
         },
         Expected::unsupported, "its data is on a raw device, not in files vmcrypt can rewrite; clone it into a "
                                "virtual disk file on the ESXi host first (vmkfstools -i)"},
        {"extent line longer than its file",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "RW 20480 FLAT \"mf-flat.vmdk\" 0", "RW 20480 FLAT \"mf-flat.vmdk\" 99999");
             return path;
         },
         Expected::invalid, "either the extent line's sector count or offset is wrong"},
        {"monolithicSparse in a separate descriptor",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "createType=\"monolithicFlat\"", "createType=\"monolithicSparse\"");
             return path;
         },
         Expected::invalid, "mf.vmdk: createType \"monolithicSparse\" keeps its descriptor inside the sparse extent"},
        {"duplicate CID",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "parentCID=ffffffff\n", "parentCID=ffffffff\nCID=12345678\n");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 5: CID: set again (first set on line 3)"},
        {"vmcrypt record value unquoted",
         [](const TempFolder& f) {
             auto path = make_flat(f);
             edit_file(path, "ddb.adapterType", "ddb.vmcrypt.state = encrypted\nddb.adapterType");
             return path;
         },
         Expected::invalid, "mf.vmdk: line 17: ddb.vmcrypt.state: value is not in double quotes"},
        {"COWD delta extent",
         [](const TempFolder& f) {
             auto path = f / "c-delta.vmdk";
             write_file(path, "COWD" + std::string(2044, '\0'));
             return path;
         },
         Expected::unsupported, "c-delta.vmdk: an ESXi vmfsSparse (COWD) snapshot delta extent is not supported"},
        {"seSparse extent",
         [](const TempFolder& f) {
             auto path = f / "s-sesparse.vmdk";
             write_file(path, std::string("\xbe\xba\xfe\xca\0\0\0\0", 8) + std::string(504, '\0'));
             return path;
         },
         Expected::unsupported, "s-sesparse.vmdk: an ESXi seSparse snapshot delta extent is not supported"},
        {"raw image",
         [](const TempFolder& f) {
             auto path = f / "d.img";
             run_command("qemu-img create -q -f raw " + shell_quote(path) + " 10M");
             return path;
         },
         Expected::unsupported, "d.img: not a VMDK or qcow2 disk"},
    };
}

}  // namespace

TEST(VmdkMalformed, RejectsAndLeavesFilesUnchanged)
{
    std::vector<MalformedDisk> cases = malformed_disks();
    ASSERT_GE(cases.size(), 15u);

    for (const MalformedDisk& malformed : cases) {
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

        EXPECT_EQ(unsupported, malformed.kind == Expected::unsupported) << message;
        EXPECT_NE(message.find(malformed.message_part), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        EXPECT_EQ(message.rfind(folder.path().string(), 0), 0u) << "message does not start with the file: " << message;
        EXPECT_EQ(hash_folder(folder.path()), before);
    }
}
