#pragma once
// Splits [0, count) into `parts` contiguous ranges and runs `work(begin, end)` on each, one range on the
// calling thread and the others on new threads. The first exception thrown by any part is rethrown
// after every part has finished.

#include <algorithm>
#include <atomic>
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

namespace vmcrypt {

// Runs `work(begin, end)` on each chunk of `chunk` items of [0, count) on `threads` threads, the calling
// thread among them. The threads take chunks in order from a shared counter, so a thread that the
// scheduler delays takes fewer chunks instead of holding up the others.
// `after_own_chunks` runs on the calling thread when it finds no chunk left. The first exception stops
// the handing out of chunks and is rethrown after every thread has finished.
template <typename Work, typename AfterOwnChunks>
void run_in_chunks(unsigned threads, std::uint64_t count, std::uint64_t chunk, const Work& work,
                   const AfterOwnChunks& after_own_chunks)
{
    const std::uint64_t chunks = (count + chunk - 1) / chunk;
    threads = static_cast<unsigned>(std::clamp<std::uint64_t>(chunks, 1, std::max(1u, threads)));
    std::atomic<std::uint64_t> next{0};

    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto record_failure = [&] {
        next = chunks;
        std::lock_guard lock(failure_mutex);
        if (!failure)
            failure = std::current_exception();
    };
    auto take_chunks = [&] {
        try {
            for (std::uint64_t index = next++; index < chunks; index = next++) {
                const std::uint64_t begin = index * chunk;
                work(begin, std::min(count, begin + chunk));
            }
        } catch (...) {
            record_failure();
        }
    };

    std::vector<std::thread> helpers;
    for (unsigned t = 1; t < threads; ++t)
        helpers.emplace_back(take_chunks);
    take_chunks();
    try {
        bool failed_already = false;
        {
            std::lock_guard lock(failure_mutex);
            failed_already = failure != nullptr;
        }
        if (!failed_already)
            after_own_chunks();
    } catch (...) {
        record_failure();
    }
    for (std::thread& helper : helpers)
        helper.join();
    if (failure)
        std::rethrow_exception(failure);
}

}  // namespace vmcrypt
