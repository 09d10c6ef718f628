#include "formats/qcow2/compression.hpp"

#include "core/error.hpp"

#include <zlib.h>
#include <zstd.h>

#include <memory>

namespace vmcrypt::qcow2 {

namespace {

std::vector<std::uint8_t> inflate_zlib(std::span<const std::uint8_t> stored, std::uint64_t cluster_size,
                                       const std::string& what)
{
    std::vector<std::uint8_t> output(cluster_size);
    z_stream stream{};
    // Raw deflate with a 4 KiB window: what QEMU's qcow2_zlib_compress() writes.
    if (inflateInit2(&stream, -12) != Z_OK)
        throw Error(ExitCode::failure, what + ": zlib initialization failed");
    stream.next_in = const_cast<Bytef*>(stored.data());
    stream.avail_in = static_cast<uInt>(stored.size());
    stream.next_out = output.data();
    stream.avail_out = static_cast<uInt>(output.size());
    int result = inflate(&stream, Z_FINISH);
    const bool full = stream.avail_out == 0;
    inflateEnd(&stream);
    if (!((result == Z_STREAM_END || result == Z_BUF_ERROR) && full))
        throw InvalidInput(what + ": the zlib data is damaged or shorter than a cluster (zlib result " +
                           std::to_string(result) + "); run qemu-img check on the image");
    return output;
}

std::vector<std::uint8_t> decompress_zstd(std::span<const std::uint8_t> stored, std::uint64_t cluster_size,
                                          const std::string& what)
{
    std::vector<std::uint8_t> output(cluster_size);
    std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> context(ZSTD_createDCtx(), ZSTD_freeDCtx);
    if (!context)
        throw Error(ExitCode::failure, what + ": zstd initialization failed");
    ZSTD_inBuffer input{stored.data(), stored.size(), 0};
    ZSTD_outBuffer out{output.data(), output.size(), 0};
    // The stored range ends on a sector boundary, so zero padding may follow the last frame.
    while (out.pos < out.size && input.pos < input.size) {
        std::size_t result = ZSTD_decompressStream(context.get(), &out, &input);
        if (ZSTD_isError(result))
            throw InvalidInput(what + ": the zstd data is damaged (" + ZSTD_getErrorName(result) +
                               "); run qemu-img check on the image");
        if (result == 0 && out.pos < out.size && input.pos == input.size)
            break;
    }
    if (out.pos != out.size)
        throw InvalidInput(what + ": the zstd data decompresses to " + std::to_string(out.pos) +
                           " bytes, less than a cluster (" + std::to_string(cluster_size) + ")");
    return output;
}

}  // namespace

std::vector<std::uint8_t> decompress_cluster(std::span<const std::uint8_t> stored, std::uint8_t compression_type,
                                             std::uint64_t cluster_size, const std::string& what)
{
    if (compression_type == 0)
        return inflate_zlib(stored, cluster_size, what);
    return decompress_zstd(stored, cluster_size, what);
}

}  // namespace vmcrypt::qcow2
