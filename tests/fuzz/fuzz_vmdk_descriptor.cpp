// libFuzzer target: the VMDK descriptor parser and record editing on arbitrary bytes.
//
// A vmcrypt::Error is the expected result for malformed input. Anything else (a crash, another
// exception, a sanitizer report, or a broken invariant, which aborts) is a bug:
//   - a parsed descriptor serializes back to the input bytes;
//   - setting a record and reading the bytes back returns that record;
//   - removing it from a descriptor that had none restores the input bytes.

#include "core/error.hpp"
#include "formats/vmdk/descriptor.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

const vmcrypt::RecordFields fuzz_record = {
    {"version", "1"},
    {"state", "encrypted"},
    {"keySlot.0", "type=keystore;kek=00000000-0000-0000-0000-000000000000;dek=QUJD"},
};

void check(bool condition)
{
    if (!condition)
        std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using vmcrypt::vmdk::Descriptor;
    std::string_view bytes(reinterpret_cast<const char*>(data), size);
    vmcrypt::vmdk::looks_like_descriptor(bytes);

    try {
        Descriptor descriptor = Descriptor::parse(bytes, "fuzz.vmdk");
        check(descriptor.serialize() == bytes);
        for (const auto& extent : descriptor.extents())
            check(extent.sectors > 0 && extent.sectors <= UINT64_MAX / 512);

        bool had_record = descriptor.record().has_value();
        Descriptor updated = descriptor;
        updated.set_record(fuzz_record);
        Descriptor stored = Descriptor::parse(updated.serialize(), "fuzz.vmdk");
        check(stored.record() == fuzz_record);
        check(stored.extents().size() == descriptor.extents().size());

        stored.remove_record();
        check(!stored.record().has_value());
        if (!had_record)
            check(stored.serialize() == bytes);
    } catch (const vmcrypt::Error&) {
    }
    return 0;
}
