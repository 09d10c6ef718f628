// Tests of the VMDK descriptor parser and of the ddb.vmcrypt.* record editing, on in-memory text.

#include "core/error.hpp"
#include "formats/vmdk/descriptor.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using vmcrypt::InvalidInput;
using vmcrypt::RecordFields;
using vmcrypt::UnsupportedInput;
using vmcrypt::vmdk::Descriptor;

namespace {

// A descriptor as qemu-img 7.2 writes it for `-o subformat=monolithicFlat`.
const std::string qemu_flat =
    "# Disk DescriptorFile\n"
    "version=1\n"
    "CID=4f680269\n"
    "parentCID=ffffffff\n"
    "createType=\"monolithicFlat\"\n"
    "\n"
    "# Extent description\n"
    "RW 204800 FLAT \"mf-flat.vmdk\" 0\n"
    "\n"
    "# The Disk Data Base\n"
    "#DDB\n"
    "\n"
    "ddb.virtualHWVersion = \"4\"\n"
    "ddb.geometry.cylinders = \"203\"\n"
    "ddb.geometry.heads = \"16\"\n"
    "ddb.geometry.sectors = \"63\"\n"
    "ddb.adapterType = \"ide\"\n"
    "ddb.toolsVersion = \"2147483647\"\n";

std::string to_crlf(const std::string& text)
{
    std::string out;
    for (char c : text) {
        if (c == '\n')
            out += '\r';
        out += c;
    }
    return out;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to)
{
    for (std::size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size()))
        text.replace(pos, from.size(), to);
    return text;
}

const RecordFields sample_record = {
    {"version", "1"},
    {"state", "encrypted"},
    {"cipher", "aes-xts-plain64"},
    {"keySlot.0", "type=keystore;kek=8d1c0c1e-2f35-4f0e-9b4e-0a3f0f2b7c11;wrap=aes-kw;dek=QUJD+/=="},
};

}  // namespace

TEST(VmdkDescriptor, ParsesQemuFields)
{
    Descriptor descriptor = Descriptor::parse(qemu_flat, "mf.vmdk");

    EXPECT_EQ(descriptor.version(), 1);
    ASSERT_TRUE(descriptor.cid().has_value());
    EXPECT_EQ(*descriptor.cid(), 0x4f680269u);
    EXPECT_EQ(descriptor.parent_cid(), vmcrypt::vmdk::no_parent_cid);
    EXPECT_EQ(descriptor.create_type(), "monolithicFlat");
    EXPECT_FALSE(descriptor.parent_file_name_hint().has_value());
    EXPECT_FALSE(descriptor.encryption_keys().has_value());
    EXPECT_EQ(descriptor.value("ddb.adapterType"), "ide");
    EXPECT_FALSE(descriptor.record().has_value());

    ASSERT_EQ(descriptor.extents().size(), 1u);
    const auto& extent = descriptor.extents()[0];
    EXPECT_EQ(extent.line_number, 8u);
    EXPECT_EQ(extent.access, "RW");
    EXPECT_EQ(extent.sectors, 204800u);
    EXPECT_EQ(extent.type, "FLAT");
    EXPECT_EQ(extent.file, "mf-flat.vmdk");
    EXPECT_EQ(extent.offset, 0u);
}

TEST(VmdkDescriptor, ParsesDeltaAndEncryptionKeys)
{
    std::string text = "# Disk DescriptorFile\n"
                       "version=1\n"
                       "CID=76d9b849\n"
                       "parentCID=6dc6b21b\n"
                       "createType=\"monolithicSparse\"\n"
                       "parentFileNameHint=\"base disk.vmdk\"\n"
                       "encryptionKeys=\"vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/a4e7,HMAC%2dSHA%2d256,kIc7))\"\n"
                       "# Extent description\n"
                       "RW 204800 SPARSE \"delta.vmdk\"\n";
    Descriptor descriptor = Descriptor::parse(text, "delta.vmdk");

    EXPECT_EQ(descriptor.parent_cid(), 0x6dc6b21bu);
    EXPECT_EQ(descriptor.parent_file_name_hint(), "base disk.vmdk");
    EXPECT_EQ(descriptor.encryption_keys(),
              "vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/a4e7,HMAC%2dSHA%2d256,kIc7))");
}

TEST(VmdkDescriptor, AcceptsSeparatorVariants)
{
    std::string text = "# a comment before the header\n"
                       "\n"
                       "# Disk DescriptorFile\n"
                       "version = 1\n"
                       "\tCID\t=\t0000abcd\t\n"
                       "createType = \"twoGbMaxExtentFlat\"\n"
                       "  RW\t2048  FLAT\t\"a b c.raw\"   0  \n"
                       "RDONLY 4096 FLAT \"/abs/path/x.raw\" 2048\n"
                       "NOACCESS 8 ZERO\n"
                       "RW 16 VMFS \"v.vmdk\"\n"
                       "ddb.adapterType=\"lsilogic\"\n";
    Descriptor descriptor = Descriptor::parse(text, "d.vmdk");

    EXPECT_EQ(descriptor.version(), 1);
    EXPECT_EQ(descriptor.cid(), 0xabcdu);
    EXPECT_EQ(descriptor.create_type(), "twoGbMaxExtentFlat");
    EXPECT_EQ(descriptor.value("ddb.adapterType"), "lsilogic");
    ASSERT_EQ(descriptor.extents().size(), 4u);
    EXPECT_EQ(descriptor.extents()[0].file, "a b c.raw");
    EXPECT_EQ(descriptor.extents()[0].sectors, 2048u);
    EXPECT_EQ(descriptor.extents()[1].access, "RDONLY");
    EXPECT_EQ(descriptor.extents()[1].offset, 2048u);
    EXPECT_EQ(descriptor.extents()[2].type, "ZERO");
    EXPECT_EQ(descriptor.extents()[2].file, "");
    EXPECT_EQ(descriptor.extents()[3].type, "VMFS");
    EXPECT_EQ(descriptor.serialize(), text);
}

TEST(VmdkDescriptor, SerializesUnchangedBytes)
{
    std::vector<std::string> variants = {
        qemu_flat,
        to_crlf(qemu_flat),
        qemu_flat.substr(0, qemu_flat.size() - 1),              // no final line ending
        qemu_flat + std::string(174, '\0'),                     // qemu's NUL padding to 512 bytes
        qemu_flat + "\n# trailing comment\n\n",
        replace_all(qemu_flat, " = ", "\t=\t"),
        to_crlf(qemu_flat).substr(0, to_crlf(qemu_flat).size() - 2) + "\n",  // mixed endings
    };
    for (const std::string& text : variants) {
        Descriptor descriptor = Descriptor::parse(text, "mf.vmdk");
        EXPECT_EQ(descriptor.serialize(), text);
    }
}

TEST(VmdkDescriptor, KeepsTrailerAfterNul)
{
    std::string trailer = std::string("\0\0stale", 7) + std::string(20, '\0');
    Descriptor descriptor = Descriptor::parse(qemu_flat + trailer, "mf.vmdk");

    EXPECT_EQ(descriptor.text(), qemu_flat);
    EXPECT_EQ(descriptor.trailer(), trailer);
    EXPECT_EQ(descriptor.serialize(), qemu_flat + trailer);
}

struct MalformedDescriptor {
    const char* name;
    std::string text;
    std::string expected;  // a part of the message: line and field
    bool unsupported = false;
};

TEST(VmdkDescriptor, RejectsMalformedLines)
{
    const std::string head = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n";
    const std::string type = "createType=\"monolithicFlat\"\n";
    const std::string extent = "RW 2048 FLAT \"f.raw\" 0\n";
    std::vector<MalformedDescriptor> cases = {
        {"sectors not a number", head + type + "RW 12x FLAT \"f.raw\" 0\n",
         "d.vmdk: line 6: extent: sector count \"12x\" is not a number"},
        {"sectors zero", head + type + "RW 0 FLAT \"f.raw\" 0\n", "line 6: extent: sector count is 0"},
        {"sectors overflow", head + type + "RW 99999999999999999999 FLAT \"f.raw\" 0\n",
         "line 6: extent: sector count \"99999999999999999999\" is not a number"},
        {"sectors too large", head + type + "RW 36028797018963968 FLAT \"f.raw\" 0\n", "line 6: extent: sector count"},
        {"lower-case access", head + type + "rw 2048 FLAT \"f.raw\" 0\n", "line 6: extent: access \"rw\""},
        {"unknown type", head + type + "RW 2048 RAW \"f.raw\" 0\n", "line 6: extent: unknown extent type \"RAW\""},
        {"unquoted file", head + type + "RW 2048 FLAT f.raw 0\n", "line 6: extent: file name f.raw is not in double quotes"},
        {"unclosed file quote", head + type + "RW 2048 FLAT \"f.raw 0\n", "line 6: extent: file name has no closing"},
        {"missing file", head + type + "RW 2048 FLAT\n", "line 6: extent: FLAT extent has no file name"},
        {"empty file", head + type + "RW 2048 FLAT \"\" 0\n", "line 6: extent: file name is empty"},
        {"offset not a number", head + type + "RW 2048 FLAT \"f.raw\" x1\n", "line 6: extent: offset \"x1\""},
        {"offset on SPARSE", head + type + "RW 2048 SPARSE \"f.vmdk\" 0\n",
         "line 6: extent: offset \"0\" is allowed only for FLAT"},
        {"ZERO with file", head + type + "RW 2048 ZERO \"f.raw\"\n", "line 6: extent: a ZERO extent has no file"},
        {"too many fields", head + type + "RW 2048 FLAT \"f.raw\" 0 9\n", "line 6: extent: unexpected text \"9\""},
        {"two fields", head + type + "RW 2048\n", "line 6: extent: expected at least ACCESS SECTORS TYPE"},
        {"no extents", head + type, "d.vmdk: extent: no extent lines"},
        {"missing createType", head + extent, "d.vmdk: createType: missing"},
        {"empty createType", head + "createType=\"\"\n" + extent, "d.vmdk: createType: missing"},
        {"missing version", "# Disk DescriptorFile\nCID=12345678\n" + type + extent, "d.vmdk: version: missing"},
        {"version not a number", "version=one\n" + type + extent, "d.vmdk: version: \"one\" is not a number"},
        {"version 4", "version=4\n" + type + extent, "d.vmdk: version: descriptor version 4 is not supported", true},
        {"bad CID", "version=1\nCID=xyz\n" + type + extent, "d.vmdk: CID: \"xyz\" is not 1 to 8 hex digits"},
        {"long parentCID", "version=1\nparentCID=123456789\n" + type + extent,
         "d.vmdk: parentCID: \"123456789\" is not 1 to 8 hex digits"},
        {"duplicate key", head + "CID=87654321\n" + type + extent, "line 5: CID: set again (first set on line 3)"},
        {"unclosed value quote", head + "createType=\"monolithicFlat\n" + extent,
         "line 5: createType: value has no closing"},
        {"text after value", head + "createType=\"monolithicFlat\" x\n" + extent,
         "line 5: createType: unexpected text \"x\""},
        {"no value", head + "createType=\n" + extent, "line 5: createType: no value after '='"},
        {"control character", head + type + "ddb.adapterType = \"i\x01" "de\"\n" + extent,
         "line 6: control character 0x01"},
        {"lone carriage return", head + type + extent + "ddb.a = \"1\"\r", "line 7: control character 0x0d"},
        {"unquoted record value", head + type + extent + "ddb.vmcrypt.state = encrypted\n",
         "line 7: ddb.vmcrypt.state: value is not in double quotes"},
        {"record key character", head + type + extent + "ddb.vmcrypt.key_slot = \"x\"\n",
         "line 7: ddb.vmcrypt.key_slot: invalid character"},
        {"record value non-ASCII", head + type + extent + "ddb.vmcrypt.state = \"\xc3\xa9\"\n",
         "line 7: ddb.vmcrypt.state: non-ASCII byte"},
    };

    for (const MalformedDescriptor& malformed : cases) {
        SCOPED_TRACE(malformed.name);
        try {
            Descriptor::parse(malformed.text, "d.vmdk");
            ADD_FAILURE() << "no exception";
        } catch (const UnsupportedInput& error) {
            EXPECT_TRUE(malformed.unsupported) << error.what();
            EXPECT_NE(std::string(error.what()).find(malformed.expected), std::string::npos) << error.what();
            EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
        } catch (const InvalidInput& error) {
            EXPECT_FALSE(malformed.unsupported) << error.what();
            EXPECT_NE(std::string(error.what()).find(malformed.expected), std::string::npos) << error.what();
            EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
        }
    }
}

TEST(VmdkDescriptor, RecordAppendsAfterLastDdbLine)
{
    Descriptor descriptor = Descriptor::parse(qemu_flat + "\n# after the DDB\n", "mf.vmdk");
    descriptor.set_record({{"version", "1"}, {"state", "encrypted"}});

    std::string expected = qemu_flat +
                           "ddb.vmcrypt.version = \"1\"\n"
                           "ddb.vmcrypt.state = \"encrypted\"\n"
                           "\n# after the DDB\n";
    EXPECT_EQ(descriptor.serialize(), expected);
    RecordFields fields = {{"version", "1"}, {"state", "encrypted"}};
    EXPECT_EQ(descriptor.record(), fields);
}

TEST(VmdkDescriptor, RecordUsesFileLineEnding)
{
    Descriptor descriptor = Descriptor::parse(to_crlf(qemu_flat), "mf.vmdk");
    descriptor.set_record({{"state", "encrypting"}});

    EXPECT_EQ(descriptor.serialize(), to_crlf(qemu_flat) + "ddb.vmcrypt.state = \"encrypting\"\r\n");
}

TEST(VmdkDescriptor, RecordReplacesOldRecord)
{
    Descriptor descriptor = Descriptor::parse(qemu_flat, "mf.vmdk");
    descriptor.set_record(sample_record);
    descriptor.set_record({{"state", "decrypting"}});

    RecordFields expected = {{"state", "decrypting"}};
    EXPECT_EQ(descriptor.record(), expected);
    EXPECT_EQ(descriptor.serialize(), qemu_flat + "ddb.vmcrypt.state = \"decrypting\"\n");
}

TEST(VmdkDescriptor, RecordRoundTripRestoresBytes)
{
    const std::string no_ddb = "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"f\" 0\n";
    std::vector<std::string> variants = {
        qemu_flat,
        to_crlf(qemu_flat),
        qemu_flat.substr(0, qemu_flat.size() - 1),
        to_crlf(qemu_flat).substr(0, to_crlf(qemu_flat).size() - 2),
        qemu_flat + std::string(174, '\0'),
        qemu_flat.substr(0, qemu_flat.size() - 1) + std::string(100, '\0'),
        replace_all(qemu_flat, " = ", "\t=\t") + "# comment\n\n",
        no_ddb,
        no_ddb.substr(0, no_ddb.size() - 1),
        no_ddb + "# The Disk Data Base\n#DDB\n\n",
    };
    for (const std::string& text : variants) {
        SCOPED_TRACE(testing::PrintToString(text));
        Descriptor descriptor = Descriptor::parse(text, "mf.vmdk");
        descriptor.set_record(sample_record);
        EXPECT_EQ(descriptor.record(), sample_record);

        // Round trip through bytes, as apply() does, before removing.
        Descriptor stored = Descriptor::parse(descriptor.serialize(), "mf.vmdk");
        EXPECT_EQ(stored.record(), sample_record);
        stored.remove_record();
        EXPECT_EQ(stored.serialize(), text);
        EXPECT_FALSE(stored.record().has_value());
    }
}

TEST(VmdkDescriptor, EmptyRecordRemoves)
{
    Descriptor descriptor = Descriptor::parse(qemu_flat, "mf.vmdk");
    descriptor.set_record(sample_record);
    descriptor.set_record({});

    EXPECT_EQ(descriptor.serialize(), qemu_flat);
}

TEST(VmdkDescriptor, RejectsBadRecordFields)
{
    std::vector<RecordFields> cases = {
        {{"state", "has \"quote\""}},
        {{"state", "line\nbreak"}},
        {{"state", "tab\there"}},
        {{"state", "caf\xc3\xa9"}},
        {{"bad key", "x"}},
        {{"", "x"}},
        {{"state", "a"}, {"state", "b"}},
    };
    for (const RecordFields& fields : cases) {
        Descriptor descriptor = Descriptor::parse(qemu_flat, "mf.vmdk");
        EXPECT_THROW(descriptor.set_record(fields), InvalidInput);
        EXPECT_EQ(descriptor.serialize(), qemu_flat);
    }
}

TEST(VmdkDescriptor, ProbesDescriptorText)
{
    using vmcrypt::vmdk::looks_like_descriptor;
    EXPECT_TRUE(looks_like_descriptor(qemu_flat));
    EXPECT_TRUE(looks_like_descriptor("\n# made by hand\n# Disk DescriptorFile\n"));
    EXPECT_TRUE(looks_like_descriptor("# Disk Descriptor File\r\n"));
    EXPECT_TRUE(looks_like_descriptor("version=1\ncreateType = \"vmfs\"\n"));
    EXPECT_FALSE(looks_like_descriptor("hello world\n"));
    EXPECT_FALSE(looks_like_descriptor("version=1\n# Disk DescriptorFile\n"));
    EXPECT_FALSE(looks_like_descriptor("createTypes=1\n"));
    EXPECT_FALSE(looks_like_descriptor(std::string("\0createType=\"x\"", 16)));
}
