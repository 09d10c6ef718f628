#pragma once
// Splits [0, count) into `parts` contiguous ranges and runs `work(begin, end)` on each, one range on the
// calling thread and the others on new threads. The first exception thrown by any part is rethrown
// after every part has finished.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace vmcrypt {

template <typename Work>
void run_in_parts(unsigned parts, std::uint64_t count, const Work& work)
{
    parts = std::max(1u, parts);
    std::uint64_t per_part = (count + parts - 1) / parts;

    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto guarded = [&](std::uint64_t begin, std::uint64_t end) {
        try {
            work(begin, end);
        } catch (...) {
            std::lock_guard lock(failure_mutex);
            if (!failure)
                failure = std::current_exception();
        }
    };

    std::vector<std::thread> threads;
    for (unsigned part = 1; part < parts; ++part) {
        std::uint64_t begin = std::min(count, part * per_part);
        std::uint64_t end = std::min(count, begin + per_part);
        if (begin < end)
            threads.emplace_back(guarded, begin, end);
    }
    guarded(0, std::min(count, per_part));
    for (std::thread& thread : threads)
        thread.join();
    if (failure)
        std::rethrow_exception(failure);
}

}  // namespace vmcrypt
