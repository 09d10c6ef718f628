#pragma once
// Big-endian integer access for qcow2 metadata, which stores every integer big-endian.

#include <cstdint>
#include <span>

namespace vmcrypt::qcow2 {

inline std::uint64_t load_be(std::span<const std::uint8_t> bytes, std::size_t offset, std::size_t width)
{
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < width; ++i)
        value = (value << 8) | bytes[offset + i];
    return value;
}

inline std::uint64_t load_be64(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return load_be(bytes, offset, 8);
}

inline std::uint32_t load_be32(std::span<const std::uint8_t> bytes, std::size_t offset)
{
    return static_cast<std::uint32_t>(load_be(bytes, offset, 4));
}

inline void store_be(std::span<std::uint8_t> bytes, std::size_t offset, std::size_t width, std::uint64_t value)
{
    for (std::size_t i = 0; i < width; ++i)
        bytes[offset + width - 1 - i] = static_cast<std::uint8_t>(value >> (8 * i));
}

inline void store_be64(std::span<std::uint8_t> bytes, std::size_t offset, std::uint64_t value)
{
    store_be(bytes, offset, 8, value);
}

inline void store_be32(std::span<std::uint8_t> bytes, std::size_t offset, std::uint32_t value)
{
    store_be(bytes, offset, 4, value);
}

}  // namespace vmcrypt::qcow2
