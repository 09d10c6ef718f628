#include "core/engine/unit_transform.hpp"

#include "core/crypto/unit_hash.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace vmcrypt {

bool is_zero_unit(std::span<const std::uint8_t> unit)
{
    std::uint64_t accumulated = 0;
    for (std::size_t i = 0; i + 8 <= unit.size(); i += 8) {
        std::uint64_t word;
        std::memcpy(&word, unit.data() + i, 8);
        accumulated |= word;
    }
    return accumulated == 0;
}

namespace {

// Encrypts the plaintext units of `data` except the all-zero ones, which stay zeros (the zero-unit rule).
void encrypt_non_zero_units(const UnitCipher& cipher, std::span<std::uint8_t> data, std::uint64_t first_sector)
{
    const std::uint64_t units = data.size() / 512;
    std::uint64_t group_start = 0;
    for (std::uint64_t unit = 0; unit <= units; ++unit) {
        // Plaintext of real data rarely starts with eight zero bytes, so most units skip the full scan.
        std::uint64_t first_word = 0;
        if (unit < units)
            std::memcpy(&first_word, data.data() + unit * 512, sizeof first_word);
        if (unit < units && (first_word != 0 || !is_zero_unit(data.subspan(unit * 512, 512))))
            continue;
        if (unit > group_start)
            cipher.encrypt_units(data.subspan(group_start * 512, (unit - group_start) * 512), first_sector + group_start);
        group_start = unit + 1;
    }
}

}  // namespace

void transform_units(const UnitCipher& cipher, Direction direction, std::span<std::uint8_t> buffer,
                     const std::vector<RunSegment>& segments, const std::vector<bool>& selected,
                     std::uint64_t first_unit, std::uint64_t end_unit, const std::vector<std::uint64_t>* unit_hashes,
                     ZeroUnits zero_units, const UnitCipher* previous, const std::uint8_t* source,
                     std::uint8_t* output)
{
    if (direction == Direction::reencrypt && !previous)
        throw std::invalid_argument("transform_units: reencrypt needs the previous DEK's cipher");
    static const std::uint64_t zero_unit_hash = [] {
        std::uint8_t zeros[512] = {};
        return unit_hash(zeros);
    }();
    // The old content of units [unit, unit + count).
    auto old_units = [&](std::uint64_t unit, std::uint64_t count) -> std::span<const std::uint8_t> {
        if (source)
            return {source + (unit - first_unit) * 512, count * 512};
        return buffer.subspan(unit * 512, count * 512);
    };
    // The bytes that receive the result of units [unit, unit + count).
    auto new_units = [&](std::uint64_t unit, std::uint64_t count) -> std::span<std::uint8_t> {
        if (source && output)
            return {output + (unit - first_unit) * 512, count * 512};
        return buffer.subspan(unit * 512, count * 512);
    };
    auto is_zero = [&](std::uint64_t unit) {
        if (zero_units == ZeroUnits::transformed)
            return false;
        if (unit_hashes && (*unit_hashes)[unit] != zero_unit_hash)
            return false;
        return is_zero_unit(old_units(unit, 1));
    };

    // Units that keep their content: only a separate source has to be copied into the buffer.
    auto keep = [&](std::uint64_t unit, std::uint64_t count) {
        if (source && count > 0)
            std::memcpy(new_units(unit, count).data(), old_units(unit, count).data(), count * 512);
    };

    auto apply = [&](std::uint64_t unit, std::uint64_t count, std::uint64_t sector) {
        std::span<std::uint8_t> data = new_units(unit, count);
        if (direction == Direction::encrypt) {
            if (source)
                cipher.encrypt_units_from(old_units(unit, count), data, sector);
            else
                cipher.encrypt_units(data, sector);
        } else if (direction == Direction::decrypt) {
            if (source)
                cipher.decrypt_units_from(old_units(unit, count), data, sector);
            else
                cipher.decrypt_units(data, sector);
        } else {
            // Both passes run on one cache-sized chunk at a time, so the encrypt pass finds the data the
            // decrypt pass left in the cache.
            constexpr std::uint64_t chunk_units = 64;
            for (std::uint64_t done = 0; done < count; done += chunk_units) {
                const std::uint64_t chunk_count = std::min(chunk_units, count - done);
                std::span<std::uint8_t> chunk = data.subspan(done * 512, chunk_count * 512);
                if (source)
                    previous->decrypt_units_from(old_units(unit + done, chunk_count), chunk, sector + done);
                else
                    previous->decrypt_units(chunk, sector + done);
                if (zero_units == ZeroUnits::kept)
                    encrypt_non_zero_units(cipher, chunk, sector + done);
                else
                    cipher.encrypt_units(chunk, sector + done);
            }
        }
    };

    for (const RunSegment& segment : segments) {
        std::uint64_t segment_first = segment.buffer_offset / 512;
        std::uint64_t segment_end = segment_first + segment.length / 512;
        std::uint64_t begin = std::max(segment_first, first_unit);
        std::uint64_t end = std::min(segment_end, end_unit);

        // Group consecutive units that need the transform into one batched call.
        std::uint64_t group_start = begin;
        std::uint64_t group_length = 0;
        for (std::uint64_t unit = begin; unit < end; ++unit) {
            bool needs_transform = (selected.empty() || selected[unit]) && !is_zero(unit);
            if (needs_transform) {
                if (group_length == 0)
                    group_start = unit;
                ++group_length;
                continue;
            }
            keep(unit, 1);
            if (group_length > 0)
                apply(group_start, group_length, segment.first_sector + (group_start - segment_first));
            group_length = 0;
        }
        if (group_length > 0)
            apply(group_start, group_length, segment.first_sector + (group_start - segment_first));
    }
}

void transform_window(const UnitCipher& cipher, Direction direction, std::span<std::uint8_t> buffer,
                      const std::vector<RunSegment>& segments, const std::vector<bool>& selected,
                      unsigned threads, ZeroUnits zero_units, const UnitCipher* previous)
{
    std::uint64_t units = buffer.size() / 512;
    threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(units / 64 + 1)));

    std::vector<std::thread> workers;
    std::uint64_t per_thread = (units + threads - 1) / threads;
    for (unsigned t = 1; t < threads; ++t) {
        std::uint64_t first = std::min(units, t * per_thread);
        std::uint64_t end = std::min(units, first + per_thread);
        workers.emplace_back([&, first, end] {
            transform_units(cipher, direction, buffer, segments, selected, first, end, nullptr, zero_units, previous);
        });
    }
    transform_units(cipher, direction, buffer, segments, selected, 0, std::min(units, per_thread), nullptr, zero_units,
                    previous);
    for (std::thread& worker : workers)
        worker.join();
}

}  // namespace vmcrypt
