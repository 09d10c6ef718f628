// libFuzzer target: the qcow2 header and header extension parser on arbitrary bytes.
//
// The input is cluster 0 of an image, and its length is the file size. A vmcrypt::Error is the expected
// result for malformed input. Anything else (a crash, another exception, a sanitizer report, or a
// broken invariant, which aborts) is a bug. A parsed header must also survive serialization and a
// second parse unchanged.

#include "core/error.hpp"
#include "formats/qcow2/header.hpp"

#include <cstdint>
#include <cstdlib>
#include <span>

namespace {

using namespace vmcrypt::qcow2;

void check(bool condition)
{
    if (!condition)
        std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::span<const std::uint8_t> input(data, size);
    Header header;
    try {
        header = parse_header(input, size, "fuzz.qcow2");
    } catch (const vmcrypt::Error&) {
        return 0;
    }

    check(header.cluster_bits >= min_cluster_bits && header.cluster_bits <= max_cluster_bits);
    check(header.version == 2 || header.version == 3);
    check(header.header_area_end <= header.cluster_size());
    check(header.refcount_table_offset % header.cluster_size() == 0);
    check(header.refcount_table_offset + std::uint64_t{header.refcount_table_clusters} * header.cluster_size() <= size);
    for (const HeaderExtension& extension : header.extensions)
        check(extension.data.size() < header.cluster_size());

    // Round trip: what vmcrypt writes, it must read back as the same header.
    std::vector<std::uint8_t> bytes;
    try {
        bytes = serialize_header(header, "fuzz.qcow2");
    } catch (const vmcrypt::Error&) {
        return 0;  // the backing file name moved behind the extensions and no longer fits
    }
    std::vector<std::uint8_t> file(input.begin(), input.end());
    std::copy(bytes.begin(), bytes.end(), file.begin());
    if (bytes.size() > size)
        return 0;
    Header again = parse_header(file, size, "fuzz.qcow2");
    check(again.size == header.size && again.l1_table_offset == header.l1_table_offset);
    check(again.extensions.size() == header.extensions.size());
    for (std::size_t i = 0; i < header.extensions.size(); ++i)
        check(again.extensions[i].type == header.extensions[i].type && again.extensions[i].data == header.extensions[i].data);
    check(again.backing_file == header.backing_file);
    return 0;
}
