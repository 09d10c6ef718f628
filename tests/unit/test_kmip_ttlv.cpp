// The TTLV codec and the KMIP messages against messages captured from PyKMIP 0.10 (tests/data/kmip/vectors.txt).
// Requests must encode to the captured bytes, and every message must decode and re-encode unchanged.
// The client must read the captured replies, and malformed input must raise TtlvError.

#include "core/kmip/client.hpp"
#include "core/kmip/messages.hpp"
#include "core/kmip/ttlv.hpp"

#include <botan/hex.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

namespace vmcrypt::kmip {
namespace {

using Bytes = std::vector<std::uint8_t>;

// Title -> bytes of every "## title" + hex line pair of the vector file. A repeated title gets " #2".
const std::map<std::string, Bytes>& vectors()
{
    static const std::map<std::string, Bytes> all = [] {
        const std::string path = std::string(VMCRYPT_TEST_DATA) + "/kmip/vectors.txt";
        std::ifstream input(path);
        if (!input)
            throw std::runtime_error(path + ": cannot open the vector file");
        std::map<std::string, Bytes> result;
        std::string line;
        std::string title;
        while (std::getline(input, line)) {
            if (line.rfind("## ", 0) == 0) {
                title = line.substr(3);
            } else if (!line.empty() && line[0] != '#') {
                if (title.empty())
                    throw std::runtime_error(path + ": hex line without a title before it");
                if (result.contains(title))
                    title += " #2";
                result.emplace(title, Botan::hex_decode(line));
                title.clear();
            }
        }
        return result;
    }();
    return all;
}

const Bytes& vector_named(const std::string& title_start)
{
    for (const auto& [title, bytes] : vectors())
        if (title.rfind(title_start, 0) == 0)
            return bytes;
    throw std::runtime_error("no vector titled \"" + title_start + "...\"");
}

Bytes to_bytes(const SecureBytes& bytes)
{
    return Bytes(bytes.begin(), bytes.end());
}

Bytes hex(const std::string& text)
{
    return Botan::hex_decode(text);
}

std::string request_bytes(Operation operation, Item payload)
{
    Request request;
    request.items.push_back({operation, std::move(payload), {}});
    return Botan::hex_encode(encode_request(request));
}

// A channel that expects one exact request and replies with one captured response.
class ReplayChannel final : public MessageChannel {
public:
    ReplayChannel(Bytes expected_request, Bytes response)
        : expected_request_(std::move(expected_request)), response_(std::move(response))
    {
    }

    SecureBytes exchange(std::span<const std::uint8_t> request) override
    {
        EXPECT_EQ(Botan::hex_encode(request.data(), request.size()), Botan::hex_encode(expected_request_));
        ++exchanges;
        return SecureBytes(response_.begin(), response_.end());
    }

    int exchanges = 0;

private:
    Bytes expected_request_;
    Bytes response_;
};

// --- primitive encodings (KMIP 1.1 section 9.1.2 examples, tag 0x420020) ---------------------------

TEST(KmipTtlv, PrimitiveEncodingsMatchSpecificationExamples)
{
    constexpr std::uint32_t t = 0x420020;
    EXPECT_EQ(Botan::hex_encode(encode(Item::integer(t, 8))), "42002002000000040000000800000000");
    EXPECT_EQ(Botan::hex_encode(encode(Item::long_integer(t, 123456789000000000))), "420020030000000801B69B4BA5749200");
    EXPECT_EQ(Botan::hex_encode(encode(Item::enumeration(t, 255))), "4200200500000004000000FF00000000");
    EXPECT_EQ(Botan::hex_encode(encode(Item::boolean(t, true))), "42002006000000080000000000000001");
    EXPECT_EQ(Botan::hex_encode(encode(Item::text_string(t, "Hello World"))),
              "420020070000000B48656C6C6F20576F726C640000000000");
    EXPECT_EQ(Botan::hex_encode(encode(Item::byte_string(t, SecureBytes{1, 2, 3}))),
              "42002008000000030102030000000000");
    EXPECT_EQ(Botan::hex_encode(encode(Item::date_time(t, 0x47DA67F8))), "42002009000000080000000047DA67F8");
    EXPECT_EQ(Botan::hex_encode(encode(Item::interval(t, 864000))), "4200200A00000004000D2F0000000000");

    Item big;
    big.tag = t;
    big.type = ItemType::big_integer;
    big.bytes = SecureBytes{0x00, 0x00, 0x00, 0x00, 0x03, 0xFD, 0x35, 0xEB, 0x6B, 0xC2, 0xDF, 0x46, 0x18, 0x08, 0x00, 0x00};
    EXPECT_EQ(Botan::hex_encode(encode(big)), "42002004000000100000000003FD35EB6BC2DF4618080000");
}

TEST(KmipTtlv, PrimitivesDecodeToTheirValues)
{
    EXPECT_EQ(decode(hex("42002002000000040000000800000000")).as_integer(), 8);
    EXPECT_EQ(decode(hex("420020020000000480000000" "00000000")).as_integer(), INT32_MIN);
    EXPECT_EQ(decode(hex("420020030000000801B69B4BA5749200")).as_long_integer(), 123456789000000000);
    EXPECT_EQ(decode(hex("42002005000000040000FFFF00000000")).as_enumeration(), 0xFFFFu);
    EXPECT_TRUE(decode(hex("42002006000000080000000000000001")).as_boolean());
    EXPECT_EQ(decode(hex("420020070000000B48656C6C6F20576F726C640000000000")).as_text(), "Hello World");
    EXPECT_EQ(to_bytes(decode(hex("42002008000000030102030000000000")).as_bytes()), (Bytes{1, 2, 3}));
    EXPECT_EQ(decode(hex("42002009000000080000000047DA67F8")).as_date_time(), 0x47DA67F8);
    EXPECT_EQ(decode(hex("4200200800000000")).as_bytes().size(), 0u);
}

TEST(KmipTtlv, TypedAccessRejectsOtherType)
{
    Item item = decode(hex("42002002000000040000000800000000"));
    EXPECT_THROW(item.as_text(), TtlvError);
    EXPECT_THROW(item.as_enumeration(), TtlvError);
    EXPECT_THROW(item.find(0x420021), TtlvError);
}

// --- captured messages ---------------------------------------------------------------------------

TEST(KmipVectors, EveryMessageDecodesAndReencodesUnchanged)
{
    ASSERT_GE(vectors().size(), 26u);
    for (const auto& [title, bytes] : vectors()) {
        SCOPED_TRACE(title);
        Item message = decode(bytes);
        EXPECT_EQ(Botan::hex_encode(encode(message)), Botan::hex_encode(bytes));
        if (std::size_t at = title.find(" bytes]"); at != std::string::npos) {
            std::size_t open = title.rfind('[', at);
            EXPECT_EQ(bytes.size(), std::stoul(title.substr(open + 1, at - open - 1)));
        }
    }
}

TEST(KmipVectors, RequestsEncodeToCapturedBytes)
{
    const std::vector<std::string> attributes{"State", "Name", "Cryptographic Usage Mask", "Initial Date",
                                              "Activation Date"};
    struct Case {
        std::string title;
        Operation operation;
        Item payload;
    };
    std::vector<Case> cases{
        {"Create AES-256", Operation::create, payload::create_aes256_key("vmware-test-key-1", kek_usage_mask)},
        {"Activate uid=1", Operation::activate, payload::unique_identifier_only("1")},
        {"Get uid=1 (request)", Operation::get, payload::unique_identifier_only("1")},
        {"Locate Name=vmware-test-key-1", Operation::locate, payload::locate_by_name("vmware-test-key-1")},
        {"GetAttributes uid=1", Operation::get_attributes, payload::get_attributes("1", attributes)},
        {"Locate Name=no-such-name", Operation::locate, payload::locate_by_name("no-such-name")},
        {"Destroy uid=1 (request)", Operation::destroy, payload::unique_identifier_only("1")},
        {"Revoke uid=1", Operation::revoke,
         payload::revoke("1", RevocationReason::cessation_of_operation, std::string())},
        {"DiscoverVersions with [1.1]", Operation::discover_versions, payload::discover_versions({{1, 1}})},
        {"Query [", Operation::query,
         payload::query({QueryFunction::operations, QueryFunction::objects, QueryFunction::server_information})},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.title);
        EXPECT_EQ(request_bytes(c.operation, c.payload), Botan::hex_encode(vector_named(c.title)));
    }
}

TEST(KmipVectors, CreateResponseGivesUid)
{
    ReplayChannel channel(vector_named("Create AES-256"), vector_named("Create (response)"));
    Client client(channel);
    EXPECT_EQ(client.create_aes256_key("vmware-test-key-1", kek_usage_mask), "1");
    EXPECT_EQ(channel.exchanges, 1);
}

TEST(KmipVectors, GetResponseGivesKeyMaterial)
{
    ReplayChannel channel(vector_named("Get uid=1 (request)"), vector_named("Get (response, Key Material"));
    Client client(channel);
    SecureBytes key = client.get_aes256_key("1");
    EXPECT_EQ(Botan::hex_encode(key), "D01F166B9792295B49293324EEE0F7728C1B6B4FD6C35D66F33C9B669EA27BBA");
}

TEST(KmipVectors, ActivateAndDestroyAndRevokeSucceed)
{
    {
        ReplayChannel channel(vector_named("Activate uid=1"), vector_named("Activate (response)"));
        EXPECT_NO_THROW(Client(channel).activate("1"));
    }
    {
        ReplayChannel channel(vector_named("Revoke uid=1"), vector_named("Revoke (response)"));
        EXPECT_NO_THROW(Client(channel).revoke("1", RevocationReason::cessation_of_operation));
    }
    {
        ReplayChannel channel(vector_named("Destroy uid=1 (request)"), vector_named("Destroy (response)"));
        EXPECT_NO_THROW(Client(channel).destroy("1"));
    }
}

TEST(KmipVectors, ResponseForAnotherKeyIsRejected)
{
    // The captured Activate reply names key "1"; a client that asked about key "2" must notice.
    Bytes request = hex(request_bytes(Operation::activate, payload::unique_identifier_only("2")));
    ReplayChannel channel(request, vector_named("Activate (response)"));
    EXPECT_THROW(Client(channel).activate("2"), TtlvError);
}

TEST(KmipVectors, LocateResponsesListUids)
{
    {
        ReplayChannel channel(vector_named("Locate Name=vmware-test-key-1"), vector_named("Locate (response) ["));
        EXPECT_EQ(Client(channel).locate_by_name("vmware-test-key-1"), std::vector<std::string>{"1"});
    }
    {
        ReplayChannel channel(vector_named("Locate Name=no-such-name"), vector_named("Locate (response, empty)"));
        EXPECT_TRUE(Client(channel).locate_by_name("no-such-name").empty());
    }
}

TEST(KmipVectors, GetAttributesResponseGivesActiveState)
{
    Bytes request = hex(request_bytes(Operation::get_attributes, payload::get_attributes("1", {"State"})));
    ReplayChannel channel(request, vector_named("GetAttributes (response)"));
    EXPECT_EQ(Client(channel).get_state("1"), static_cast<std::uint32_t>(KeyState::active));
}

TEST(KmipVectors, FailedResponsesRaiseOperationFailed)
{
    struct Case {
        std::string request;
        std::string response;
        ResultReason reason;
        std::string message;
    };
    std::vector<Case> cases{
        {"Destroy uid=1 while Active", "Destroy (response: Operation Failed", ResultReason::permission_denied,
         "Object is active and cannot be destroyed."},
        {"Get uid=1 by client2", "Get (response: Operation Failed / Permission", ResultReason::permission_denied,
         "Could not locate object: 1"},
        {"Get uid=1 after Destroy", "Get (response: Operation Failed / Item", ResultReason::item_not_found,
         "Could not locate object: 1"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.request);
        ReplayChannel channel(vector_named(c.request), vector_named(c.response));
        Client client(channel);
        try {
            if (c.request.rfind("Destroy", 0) == 0)
                client.destroy("1");
            else
                client.get_aes256_key("1");
            ADD_FAILURE() << "no OperationFailed";
        } catch (const OperationFailed& e) {
            EXPECT_EQ(e.reason(), static_cast<std::uint32_t>(c.reason));
            EXPECT_NE(std::string(e.what()).find(result_reason_name(e.reason())), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
        }
    }
}

TEST(KmipVectors, ResponseHeaderIsDecoded)
{
    Response response = decode_response(vector_named("Create (response)"));
    EXPECT_EQ(response.version, (ProtocolVersion{1, 1}));
    EXPECT_EQ(response.time_stamp, 0x6B131470);
    ASSERT_EQ(response.items.size(), 1u);
    EXPECT_EQ(response.items[0].operation, static_cast<std::uint32_t>(Operation::create));
    EXPECT_EQ(response.items[0].status, ResultStatus::success);
}

TEST(KmipVectors, CredentialGoesIntoRequestHeader)
{
    UsernamePassword credential{"admin", SecureBytes{'s', 'e', 'c', 'r', 'e', 't'}};
    Request request;
    request.credential = &credential;
    request.items.push_back({Operation::discover_versions, payload::discover_versions({}), {}});
    Item message = decode(encode_request(request));
    const Item& value = message.require(tag::request_header)
                            .require(tag::authentication)
                            .require(tag::credential)
                            .require(tag::credential_value);
    EXPECT_EQ(value.require(tag::username).as_text(), "admin");
    EXPECT_EQ(value.require(tag::password).as_text(), "secret");
}

// --- malformed input -----------------------------------------------------------------------------

Bytes with_byte(Bytes bytes, std::size_t at, std::uint8_t value)
{
    bytes.at(at) = value;
    return bytes;
}

TEST(KmipMalformed, DecoderRejectsEachDefect)
{
    const Bytes create = vector_named("Create (response)");
    struct Case {
        std::string what;
        Bytes bytes;
    };
    std::vector<Case> cases{
        {"empty input", {}},
        {"half a header", Bytes(create.begin(), create.begin() + 4)},
        {"truncated message", Bytes(create.begin(), create.end() - 8)},
        {"trailing bytes", [&] { Bytes b = create; b.resize(b.size() + 8, 0); return b; }()},
        {"size not a multiple of 8", Bytes(create.begin(), create.end() - 3)},
        {"outer length too long", with_byte(create, 7, 0xA8)},
        {"outer length too short", with_byte(create, 7, 0x98)},
        {"unknown type", with_byte(create, 3, 0x0B)},
        {"type zero", with_byte(create, 3, 0x00)},
        {"tag outside 0x42/0x54", with_byte(create, 0, 0x43)},
        {"integer of length 8", hex("4200200200000008" "0000000000000008")},
        {"enumeration of length 2", hex("4200200500000002" "0001000000000000")},
        {"boolean of value 2", hex("4200200600000008" "0000000000000002")},
        {"non-zero padding", hex("4200200200000004" "0000000800000001")},
        {"text padding non-zero", hex("4200200700000001" "4100000000000001")},
        {"invalid UTF-8", hex("4200200700000002" "C328000000000000")},
        {"overlong UTF-8", hex("4200200700000002" "C0AF000000000000")},
        {"big integer of 4 bytes", hex("4200200400000004" "0000000100000000")},
        {"child overruns parent", hex("4200200100000010" "4200210200000004" "0000000100000000" "4200220200000004"
                                      "0000000200000000")},
        {"structure with a partial child", hex("4200200100000008" "4200210200000004")},
        {"length beyond 32-bit value space", hex("42002008FFFFFFFF")},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        EXPECT_THROW(decode(c.bytes), TtlvError);
    }
}

TEST(KmipMalformed, NestingDeeperThanLimitIsRejected)
{
    Item leaf = Item::integer(0x420020, 1);
    Item nested = leaf;
    for (std::size_t depth = 0; depth < max_nesting_depth; ++depth)
        nested = Item::structure(0x420020, {nested});
    EXPECT_THROW(encode(nested), TtlvError);

    // The encoder rejects this depth, so the decoder's input is built by hand.
    Bytes bytes = hex("42002002000000040000000100000000");
    for (std::size_t depth = 0; depth < max_nesting_depth; ++depth) {
        Bytes outer = hex("4200200100000000");
        std::uint32_t length = static_cast<std::uint32_t>(bytes.size());
        outer[4] = static_cast<std::uint8_t>(length >> 24);
        outer[5] = static_cast<std::uint8_t>(length >> 16);
        outer[6] = static_cast<std::uint8_t>(length >> 8);
        outer[7] = static_cast<std::uint8_t>(length);
        outer.insert(outer.end(), bytes.begin(), bytes.end());
        bytes = std::move(outer);
    }
    EXPECT_THROW(decode(bytes), TtlvError);
}

TEST(KmipMalformed, FramingHeaderIsChecked)
{
    const Bytes create = vector_named("Create (response)");
    EXPECT_EQ(message_size_from_header(std::span<const std::uint8_t, 8>(create.data(), 8)), create.size());
    const Bytes text = hex("4200780700000010");
    EXPECT_THROW(message_size_from_header(std::span<const std::uint8_t, 8>(text.data(), 8)), TtlvError);
    const Bytes huge = hex("42007B0100100000");
    EXPECT_THROW(message_size_from_header(std::span<const std::uint8_t, 8>(huge.data(), 8)), TtlvError);
    const Bytes odd = hex("42007B0100000009");
    EXPECT_THROW(message_size_from_header(std::span<const std::uint8_t, 8>(odd.data(), 8)), TtlvError);
    const Bytes http = {'H', 'T', 'T', 'P', '/', '1', '.', '1'};
    EXPECT_THROW(message_size_from_header(std::span<const std::uint8_t, 8>(http.data(), 8)), TtlvError);
}

TEST(KmipMalformed, ResponseFrameIsChecked)
{
    // A request where a response belongs.
    EXPECT_THROW(decode_response(vector_named("Get uid=1 (request)")), TtlvError);

    // Batch Count 2 with one batch item: byte 0x53 of the Create response is the count's low byte.
    Bytes create = vector_named("Create (response)");
    ASSERT_EQ(create[0x53], 0x01);
    EXPECT_THROW(decode_response(with_byte(create, 0x53, 0x02)), TtlvError);

    // Result Status 7 is not a KMIP value.
    Bytes status = vector_named("Create (response)");
    ASSERT_EQ(status[0x7B], 0x00);
    EXPECT_THROW(decode_response(with_byte(status, 0x7B, 0x07)), TtlvError);
}

TEST(KmipMalformed, ReplyToAnotherOperationIsRejected)
{
    // The Activate reply comes back for a Get request.
    ReplayChannel channel(vector_named("Get uid=1 (request)"), vector_named("Activate (response)"));
    EXPECT_THROW(Client(channel).get_aes256_key("1"), TtlvError);
}

}  // namespace
}  // namespace vmcrypt::kmip
