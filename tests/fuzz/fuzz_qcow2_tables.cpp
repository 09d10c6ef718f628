// libFuzzer target: the qcow2 table walk (L1, L2, refcounts, snapshots) on a whole image.
//
// The input is a whole image file, written to a memfd. It is opened read-only (the table walk and
// the snapshot table) and, for small inputs, read-write (refcounts checked against every reference;
// the memfd is private, so the OFD lock conflicts with nothing). A vmcrypt::Error is the expected
// result for malformed input; anything else is a bug. Data runs must lie inside the file and carry
// the tweak of the image's sector numbering (host offset for LUKS, guest sector for legacy AES).

#include "core/error.hpp"
#include "core/io/file.hpp"
#include "formats/qcow2/qcow2_disk.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace {

using namespace vmcrypt;

constexpr std::size_t max_input = 4 << 20;

void check(bool condition)
{
    if (!condition)
        std::abort();
}

void open_and_check(const std::string& path, Access access, std::uint64_t size)
{
    try {
        File file = File::open(path, access);
        std::unique_ptr<qcow2::QcowDisk> disk = qcow2::QcowDisk::open(std::move(file), path);
        for (const DataRun& run : disk->data_runs()) {
            check(run.length > 0 && run.length % 512 == 0 && run.host_offset % 512 == 0);
            // Legacy AES images and guest-sector records number units by guest sector, LUKS by host offset.
            if (disk->tweak_rule() == "host-sector")
                check(run.first_sector == run.host_offset / 512);
            else
                check(run.first_sector * 512 + run.length <= disk->capacity());
            check(run.host_offset < size);
        }
        disk->relations();
    } catch (const vmcrypt::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size > max_input)
        return 0;
    int fd = ::memfd_create("fuzz-qcow2", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (::write(fd, data, size) == static_cast<ssize_t>(size)) {
        std::string path = "/proc/self/fd/" + std::to_string(fd);
        open_and_check(path, Access::read_only, size);
        open_and_check(path, Access::read_write, size);
    }
    ::close(fd);
    return 0;
}
