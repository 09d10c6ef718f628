#include "core/io/mapped_range.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <utility>

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
