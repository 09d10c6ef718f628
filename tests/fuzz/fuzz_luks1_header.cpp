// libFuzzer target: the LUKS1 header parser and key slot unlocking on arbitrary bytes.
//
// The first input byte selects the mode. Odd: the rest of the input is the whole area, so short and
// truncated areas are covered. Even: the rest is copied to the start of a zero-filled area of QEMU's
// length, so phdrs whose key material lies anywhere in a full area pass the layout checks; when such a
// header parses and asks for at most 16 PBKDF2 iterations, the target also unlocks it. A vmcrypt::Error
// is the expected result for malformed input. Anything else (a crash, another exception, a sanitizer
// report, or a broken invariant, which aborts) is a bug.

#include "core/error.hpp"
#include "formats/qcow2/luks1_header.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

namespace {

using namespace vmcrypt::qcow2;

constexpr std::uint32_t max_unlock_iterations = 16;

void check(bool condition)
{
    if (!condition)
        std::abort();
}

bool cheap_to_unlock(const LuksHeader& header)
{
    if (header.mk_digest_iterations > max_unlock_iterations)
        return false;
    return std::all_of(header.slots.begin(), header.slots.end(), [](const LuksKeySlot& slot) {
        return !slot.active || slot.iterations <= max_unlock_iterations;
    });
}

void parse_and_unlock(std::span<const std::uint8_t> area, bool try_unlock)
{
    LuksHeader header;
    try {
        header = parse_luks_header(area, "fuzz");
    } catch (const vmcrypt::Error&) {
        return;
    }
    // Invariants of a header that parsed.
    check(header.version == 1 && header.key_bytes == luks_master_key_size);
    for (const auto& slot : header.slots) {
        check(slot.stripes == luks_stripes);
        check((std::uint64_t{slot.key_material_offset} * luks_sector_size + luks_master_key_size * luks_stripes) <=
              area.size());
    }

    if (!try_unlock || !cheap_to_unlock(header))
        return;
    static const std::vector<std::uint8_t> secret = {'f', 'u', 'z', 'z'};
    try {
        const auto master_key = unlock_luks(header, area, secret, "fuzz");
        check(master_key.size() == luks_master_key_size);
    } catch (const vmcrypt::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0)
        return 0;
    const std::span<const std::uint8_t> input(data + 1, size - 1);
    if (data[0] & 1) {
        parse_and_unlock(input, false);
        return 0;
    }

    // Only the bytes the previous input wrote are cleared: the rest of the 2 MB area is still zero.
    static std::vector<std::uint8_t> area(luks_area_length());
    static std::size_t written = 0;
    std::fill_n(area.begin(), written, 0);
    written = std::min(input.size(), area.size());
    std::copy_n(input.begin(), written, area.begin());
    parse_and_unlock(area, true);
    return 0;
}
