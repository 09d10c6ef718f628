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

constexpr std::uint64_t scanned_bytes = 1 << 20;
constexpr std::size_t checked_units = 8;
constexpr std::string_view check_label = "vmcrypt data check v1";

}  // namespace

std::string compute_data_check(Disk& disk, const SecureBytes& dek)
{
    RunStream stream(disk.data_runs());
    std::vector<File*> files = disk.files();
    std::uint64_t length = std::min(stream.total_bytes(), scanned_bytes);

    std::vector<std::uint8_t> message;
    std::vector<std::uint8_t> unit(512);
    std::size_t found = 0;
    for (const RunSegment& segment : stream.segments(0, length)) {
        for (std::uint64_t offset = 0; offset < segment.length && found < checked_units; offset += 512) {
            File& file = *files.at(segment.file_index);
            if (!file.read_exact(segment.host_offset + offset, unit))
                throw IoError(file.path().string() + ": short read at offset " +
                              std::to_string(segment.host_offset + offset));
            if (is_zero_unit(unit))
                continue;
            std::uint64_t sector = segment.first_sector + offset / 512;
            for (int i = 0; i < 8; ++i)
                message.push_back(static_cast<std::uint8_t>(sector >> (8 * i)));
            message.insert(message.end(), unit.begin(), unit.end());
            ++found;
        }
    }

    SecureBytes key = hkdf_sha256(dek, check_label, 32);
    Mac check = hmac_sha256(key, message);
    return Botan::base64_encode(check.data(), check.size());
}

}  // namespace vmcrypt
