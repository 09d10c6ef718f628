// libFuzzer target: a hosted sparse extent file on arbitrary bytes.
//
// The input is a whole extent file. The target parses the 512-byte header, parses every 2048-byte
// chunk after it as a grain table, and, for inputs up to 1 MiB, scans the grain directory through a
// memfd. A vmcrypt::Error is the expected result for malformed input. Anything else (a crash, another
// exception, a sanitizer report, or a broken invariant, which aborts) is a bug.

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/grain_directory.hpp"
#include "formats/vmdk/sparse_header.hpp"

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace {

using namespace vmcrypt::vmdk;

constexpr std::size_t max_scanned_size = 1 << 20;

void check(bool condition)
{
    if (!condition)
        std::abort();
}

void check_grain_tables(std::span<const std::uint8_t> input, const SparseHeader& header)
{
    std::uint64_t tables = header.grain_directory_entries();
    if (tables == 0)
        return;
    std::size_t index = 0;
    for (std::size_t offset = sparse_header_size; offset + grain_table_bytes <= input.size() && index < 16;
         offset += grain_table_bytes, ++index) {
        try {
            auto entries = parse_grain_table(input.subspan(offset, grain_table_bytes), index % tables, header,
                                             input.size(), "fuzz.vmdk");
            check(entries.size() == grain_table_entry_count);
            for (std::uint32_t entry : entries) {
                if (entry > gte_zeroed)
                    check(entry >= header.overhead && std::uint64_t{entry} * 512 < input.size());
            }
        } catch (const vmcrypt::Error&) {
        }
    }
}

// Scans the grain directory of the input as a file and checks the data runs.
void check_scan(std::span<const std::uint8_t> input, const SparseHeader& header)
{
    int fd = ::memfd_create("fuzz-vmdk-sparse", MFD_CLOEXEC);
    if (fd < 0)
        return;
    bool written = ::write(fd, input.data(), input.size()) == static_cast<ssize_t>(input.size());
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    try {
        if (written) {
            vmcrypt::File file = vmcrypt::File::open(path, vmcrypt::Access::read_only);
            SparseExtentScan scan = scan_sparse_extent(file, header, 0, 0, "fuzz.vmdk");
            std::uint64_t total = 0;
            std::uint64_t previous_end = 0;
            for (const vmcrypt::DataRun& run : scan.runs) {
                check(run.length > 0 && run.length % 512 == 0 && run.host_offset % 512 == 0);
                check(run.host_offset >= header.overhead * 512 && run.host_offset + run.length <= input.size());
                check(run.first_sector * 512 >= previous_end);
                check(run.first_sector + run.length / 512 <= header.capacity);
                previous_end = run.first_sector * 512 + run.length;
                total += run.length;
            }
            check(total == scan.allocated_bytes);
        }
    } catch (const vmcrypt::Error&) {
    }
    ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::span<const std::uint8_t> input(data, size);
    SparseHeader header;
    try {
        header = parse_sparse_header(input.first(std::min(size, sparse_header_size)), size, "fuzz.vmdk");
    } catch (const vmcrypt::Error&) {
        return 0;
    }

    check(header.grain_size >= 1 && header.grain_size <= max_grain_size);
    check(header.overhead * 512 <= size);
    check_grain_tables(input, header);
    if (size <= max_scanned_size)
        check_scan(input, header);
    return 0;
}
