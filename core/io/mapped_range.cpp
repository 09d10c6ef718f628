#include "core/io/mapped_range.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

namespace vmcrypt {

namespace {

// The live mappings that the SIGBUS handler checks, with the line it prints for each. A rewrite maps
// the segments of at most three windows at a time (see run_step in rewrite_engine.cpp), and a 16 MiB
// window has at most 16 segments of 1 MiB or more. Larger windows may use up the slots. A mapping that finds no free slot is not made, and the caller
// reads with pread.
struct Slot {
    std::atomic<std::uintptr_t> begin{0};
    std::atomic<std::uintptr_t> end{0};  // 0: free
    char message[1024] = {};
    std::size_t message_length = 0;
};
constexpr int slot_count = 256;
Slot slots[slot_count];
std::mutex slots_mutex;  // taken by map and unmap, never by the handler

extern "C" void on_sigbus(int signal_number, siginfo_t* info, void*)
{
    const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    for (const Slot& slot : slots) {
        if (address >= slot.begin.load() && address < slot.end.load()) {
            (void)!::write(STDERR_FILENO, slot.message, slot.message_length);
            ::_exit(6);
        }
    }
    // Not a mapped read: the default action, as if no handler were installed, when the faulting
    // instruction runs again.
    ::signal(signal_number, SIG_DFL);
}

void install_sigbus_handler()
{
    static std::once_flag installed;
    std::call_once(installed, [] {
        struct sigaction action {};
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        ::sigaction(SIGBUS, &action, nullptr);
    });
}

// Registers [begin, end) with its message. Returns the slot, or -1 when all are taken.
int register_mapping(std::uintptr_t begin, std::uintptr_t end, const std::string& failure_message)
{
    const std::string line = "vmcrypt: " + failure_message.substr(0, sizeof(Slot::message) - 11) + "\n";
    std::lock_guard lock(slots_mutex);
    for (int i = 0; i < slot_count; ++i) {
        Slot& slot = slots[i];
        if (slot.end.load() != 0)
            continue;
        std::memcpy(slot.message, line.data(), line.size());
        slot.message_length = line.size();
        slot.begin.store(begin);
        slot.end.store(end);
        return i;
    }
    return -1;
}

}  // namespace

std::optional<MappedRange> MappedRange::map(const File& file, std::uint64_t offset, std::uint64_t length,
                                            const std::string& failure_message)
{
    if (length == 0)
        return std::nullopt;

    // mmap takes a page-aligned file offset, so the mapping starts at the range's page.
    static const std::uint64_t page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t lead = offset % page_size;
    const std::size_t mapped_length = static_cast<std::size_t>(lead + length);

    // Page tables are filled later by populate(), on the threads that read each chunk: MAP_POPULATE
    // here would fill them all on the one thread that maps the window, while the other waits.
    void* base = ::mmap(nullptr, mapped_length, PROT_READ, MAP_SHARED, file.fd(), static_cast<off_t>(offset - lead));
    if (base == MAP_FAILED)
        return std::nullopt;

    ::madvise(base, mapped_length, MADV_SEQUENTIAL);

    install_sigbus_handler();
    const auto begin = reinterpret_cast<std::uintptr_t>(base);
    const int slot = register_mapping(begin, begin + mapped_length, failure_message);
    if (slot < 0) {
        ::munmap(base, mapped_length);
        return std::nullopt;
    }
    const auto* first = static_cast<const std::uint8_t*>(base) + lead;
    return MappedRange(base, mapped_length, {first, static_cast<std::size_t>(length)}, slot);
}

bool MappedRange::populate(std::uint64_t offset, std::uint64_t length) const noexcept
{
    static const std::uint64_t page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const auto first = reinterpret_cast<std::uintptr_t>(bytes_.data() + offset);
    const std::uintptr_t begin = first - first % page_size;
    const std::uintptr_t end = first + length;
    // A page that cannot be read raises SIGBUS when touched, while pread reports the same error as EIO
    // with a message naming the file. MADV_POPULATE_READ (Linux 5.14, madvise(2)) reads the pages in
    // and fails with EFAULT or EHWPOISON where touching a page would raise SIGBUS.
    void* first_page = reinterpret_cast<void*>(begin);
    if (::madvise(first_page, end - begin, MADV_POPULATE_READ) == 0)
        return true;
    if (errno != EINVAL)
        return false;

    // An older kernel rejects the advice with EINVAL. Then only bytes that are in the page cache now
    // are read through the mapping; the first access maps them.
    std::vector<unsigned char> resident((end - begin + page_size - 1) / page_size);
    return ::mincore(first_page, end - begin, resident.data()) == 0 &&
           std::all_of(resident.begin(), resident.end(), [](unsigned char page) { return page & 1; });
}

void MappedRange::unmap() noexcept
{
    if (!base_)
        return;
    // The slot is freed before the address range can be reused by another mapping.
    if (slot_ >= 0) {
        std::lock_guard lock(slots_mutex);
        slots[slot_].end.store(0);
        slots[slot_].begin.store(0);
    }
    ::munmap(base_, mapped_length_);
    base_ = nullptr;
    slot_ = -1;
}

MappedRange::MappedRange(MappedRange&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), mapped_length_(std::exchange(other.mapped_length_, 0)),
      bytes_(std::exchange(other.bytes_, {})), slot_(std::exchange(other.slot_, -1))
{
}

MappedRange& MappedRange::operator=(MappedRange&& other) noexcept
{
    if (this != &other) {
        unmap();
        base_ = std::exchange(other.base_, nullptr);
        mapped_length_ = std::exchange(other.mapped_length_, 0);
        bytes_ = std::exchange(other.bytes_, {});
        slot_ = std::exchange(other.slot_, -1);
    }
    return *this;
}

MappedRange::~MappedRange()
{
    unmap();
}

}  // namespace vmcrypt
