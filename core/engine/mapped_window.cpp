#include "core/engine/mapped_window.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

namespace vmcrypt {

MappedWindow::MappedWindow(const std::vector<File*>& files, const std::vector<RunSegment>& segments)
{
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    mappings_.reserve(segments.size());
    for (const RunSegment& segment : segments) {
        const File& file = *files.at(segment.file_index);
        std::uint64_t aligned = segment.host_offset / page * page;
        std::uint64_t lead = segment.host_offset - aligned;

        Mapping mapping;
        mapping.mapped_length = static_cast<std::size_t>(lead + segment.length);
        mapping.address = ::mmap(nullptr, mapping.mapped_length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                 file.fd(), static_cast<off_t>(aligned));
        if (mapping.address == MAP_FAILED) {
            int saved = errno;
            unmap_all();
            throw IoError(file.path().string() + ": mapping " + std::to_string(segment.length) + " bytes at offset " +
                          std::to_string(segment.host_offset) + " failed: " + std::strerror(saved));
        }
        mapping.data = static_cast<std::uint8_t*>(mapping.address) + lead;
        mapping.first_unit = segment.buffer_offset / 512;
        mapping.unit_count = segment.length / 512;
        mapping.first_sector = segment.first_sector;
        mapping.file = &file;
        mappings_.push_back(mapping);
    }
}

MappedWindow::~MappedWindow()
{
    unmap_all();
}

void MappedWindow::unmap_all() noexcept
{
    for (Mapping& mapping : mappings_)
        if (mapping.address)
            ::munmap(mapping.address, mapping.mapped_length);
    mappings_.clear();
}

void MappedWindow::sync()
{
    for (const Mapping& mapping : mappings_)
        if (::msync(mapping.address, mapping.mapped_length, MS_SYNC) != 0)
            throw IoError(mapping.file->path().string() + ": writing back the rewritten window failed: " +
                          std::strerror(errno));
}

}  // namespace vmcrypt
