#include "core/engine/data_check.hpp"

#include "core/crypto/kdf.hpp"
#include "core/crypto/mac.hpp"
#include "core/engine/run_stream.hpp"
#include "core/engine/unit_transform.hpp"
#include "core/error.hpp"

#include <botan/base64.h>

#include <algorithm>

namespace vmcrypt {

namespace {

constexpr std::uint64_t scanned_bytes = 1 << 20;  // read per step
constexpr std::size_t checked_units = 8;
constexpr std::string_view check_label = "vmcrypt data check v1";

}  // namespace

std::string compute_data_check(Disk& disk, const SecureBytes& dek)
{
    RunStream stream(disk.data_runs());
    std::vector<File*> files = disk.files();

    // Scan the stream a chunk at a time until enough non-zero units are found. Only a disk with fewer
    // non-zero units than that is read to its end.
    std::vector<std::uint8_t> message;
    std::vector<std::uint8_t> chunk;
    std::size_t found = 0;
    for (std::uint64_t position = 0; position < stream.total_bytes() && found < checked_units;
         position += scanned_bytes) {
        std::uint64_t length = std::min(scanned_bytes, stream.total_bytes() - position);
        chunk.resize(length);
        for (const RunSegment& segment : stream.segments(position, length)) {
            File& file = *files.at(segment.file_index);
            if (!file.read_exact(segment.host_offset, {chunk.data() + segment.buffer_offset, segment.length}))
                throw IoError(file.path().string() + ": short read at offset " + std::to_string(segment.host_offset));
            for (std::uint64_t offset = 0; offset < segment.length && found < checked_units; offset += 512) {
                const std::uint8_t* unit = chunk.data() + segment.buffer_offset + offset;
                if (is_zero_unit({unit, 512}))
                    continue;
                std::uint64_t sector = segment.first_sector + offset / 512;
                for (int i = 0; i < 8; ++i)
                    message.push_back(static_cast<std::uint8_t>(sector >> (8 * i)));
                message.insert(message.end(), unit, unit + 512);
                ++found;
            }
        }
    }

    SecureBytes key = hkdf_sha256(dek, check_label, 32);
    Mac check = hmac_sha256(key, message);
    return Botan::base64_encode(check.data(), check.size());
}

}  // namespace vmcrypt
