// libFuzzer target: the TTLV decoder and the KMIP Response Message reader on arbitrary bytes, as a
// KMS server (or anything posing as one) could send them.
//
// TtlvError is the expected result for malformed input. Anything else (a crash, another exception, a
// sanitizer report, or a broken invariant, which aborts) is a bug:
//   - a decoded message encodes back to the input bytes;
//   - the framing header of a decodable message announces exactly its size.

#include "core/kmip/messages.hpp"
#include "core/kmip/ttlv.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>

namespace {

void check(bool condition)
{
    if (!condition)
        std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace vmcrypt::kmip;
    std::span<const std::uint8_t> input(data, size);

    try {
        Item item = decode(input);
        vmcrypt::SecureBytes encoded = encode(item);
        check(encoded.size() == size && std::equal(encoded.begin(), encoded.end(), data));
        if (item.type == ItemType::structure)
            check(message_size_from_header(input.first<8>()) == size);
    } catch (const TtlvError&) {
    }

    try {
        Response response = decode_response(input);
        check(!response.items.empty());
    } catch (const TtlvError&) {
    }
    return 0;
}
