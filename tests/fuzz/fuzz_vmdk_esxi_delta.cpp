// libFuzzer target: the ESXi delta extent readers (vmfsSparse/COWD and seSparse) on arbitrary bytes.
//
// The input is a whole extent file, given to both readers through a memfd; the first byte picks the
// capacity in grains. A vmcrypt::Error is the expected result for malformed input. Anything else (a
// crash, another exception, a sanitizer report, or a broken invariant, which aborts) is a bug.

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/esxi_extents.hpp"

#include <cstdint>
#include <cstdlib>
#include <sys/mman.h>
#include <unistd.h>

namespace {

using namespace vmcrypt::vmdk;

constexpr std::size_t max_input_size = 1 << 20;

void check(bool condition)
{
    if (!condition)
        std::abort();
}

// Every run lies inside the extent's guest range and, for data, inside the file.
void check_runs(const std::vector<GuestRun>& runs, std::uint64_t sectors, std::uint64_t file_size)
{
    std::uint64_t previous_end = 0;
    for (const GuestRun& run : runs) {
        check(run.length > 0 && run.guest_offset % 512 == 0 && run.length % 512 == 0);
        check(run.guest_offset >= previous_end);
        check(run.guest_offset + run.length <= sectors * 512);
        if (run.kind == GuestRunKind::data)
            check(run.host_offset + run.length <= file_size);
        previous_end = run.guest_offset + run.length;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 1 || size > max_input_size)
        return 0;
    std::uint64_t sectors = std::uint64_t{data[0]} * 8 + 1;

    int fd = ::memfd_create("esxi-delta", 0);
    if (fd < 0)
        return 0;
    if (::write(fd, data, size) != static_cast<ssize_t>(size)) {
        ::close(fd);
        return 0;
    }
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    try {
        vmcrypt::File file = vmcrypt::File::open(path, vmcrypt::Access::read_only);
        try {
            check_runs(read_cowd_extent(file, sectors, 0, "fuzz"), sectors, file.size());
        } catch (const vmcrypt::Error&) {
        }
        try {
            check_runs(read_sesparse_extent(file, sectors, 0, "fuzz"), sectors, file.size());
        } catch (const vmcrypt::Error&) {
        }
    } catch (const vmcrypt::Error&) {
    }
    ::close(fd);
    return 0;
}
