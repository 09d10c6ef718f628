#include "core/io/mapped_range.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace vmcrypt {

std::optional<MappedRange> MappedRange::map(const File& file, std::uint64_t offset, std::uint64_t length)
{
    if (length == 0)
        return std::nullopt;

    // mmap takes a page-aligned file offset, so the mapping starts at the range's page.
    static const std::uint64_t page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t lead = offset % page_size;
    const std::size_t mapped_length = static_cast<std::size_t>(lead + length);

    // MAP_POPULATE maps every page in this one call, instead of one page fault per few pages during the
    // hash pass.
    void* base = ::mmap(nullptr, mapped_length, PROT_READ, MAP_SHARED | MAP_POPULATE, file.fd(),
                        static_cast<off_t>(offset - lead));
    if (base == MAP_FAILED)
        return std::nullopt;

    // MAP_POPULATE ignores read errors, and a page that could not be read raises SIGBUS when touched.
    // pread reports the same error as EIO, with a message naming the file, so a range that is not
    // wholly in memory now is read that way instead.
    std::vector<unsigned char> resident((mapped_length + page_size - 1) / page_size);
    if (::mincore(base, mapped_length, resident.data()) != 0 ||
        !std::all_of(resident.begin(), resident.end(), [](unsigned char page) { return page & 1; })) {
        ::munmap(base, mapped_length);
        return std::nullopt;
    }
    ::madvise(base, mapped_length, MADV_SEQUENTIAL);
    const auto* first = static_cast<const std::uint8_t*>(base) + lead;
    return MappedRange(base, mapped_length, {first, static_cast<std::size_t>(length)});
}

MappedRange::MappedRange(MappedRange&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), mapped_length_(std::exchange(other.mapped_length_, 0)),
      bytes_(std::exchange(other.bytes_, {}))
{
}

MappedRange& MappedRange::operator=(MappedRange&& other) noexcept
{
    if (this != &other) {
        if (base_)
            ::munmap(base_, mapped_length_);
        base_ = std::exchange(other.base_, nullptr);
        mapped_length_ = std::exchange(other.mapped_length_, 0);
        bytes_ = std::exchange(other.bytes_, {});
    }
    return *this;
}

MappedRange::~MappedRange()
{
    if (base_)
        ::munmap(base_, mapped_length_);
}

}  // namespace vmcrypt
