#pragma once
// Decompression of one compressed qcow2 cluster: zlib raw deflate (compression type 0) or zstd (1).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace vmcrypt::qcow2 {

// Inflates `stored` into exactly `cluster_size` bytes, as QEMU 7.2 does (block/qcow2-threads.c): the
// result must fill the cluster, and bytes after the end of the compressed stream are ignored. Throws
// InvalidInput naming `what` when the data is damaged or too short.
std::vector<std::uint8_t> decompress_cluster(std::span<const std::uint8_t> stored, std::uint8_t compression_type,
                                             std::uint64_t cluster_size, const std::string& what);

}  // namespace vmcrypt::qcow2
