#include "formats/qcow2/legacy_aes.hpp"

#include "core/crypto/aes_cbc_plain64.hpp"
#include "core/error.hpp"

#include <algorithm>
#include <array>
#include <set>

namespace vmcrypt::qcow2 {

namespace {

constexpr std::uint64_t leading_samples = 64;
constexpr std::uint64_t spread_samples = 192;
// In 512 uniformly random bytes, a given value occurs 32 times or more with probability 2^-89.7, so
// some value does with at most 2^-81.7, and some sector of 256 with at most 2^-73.7. Text, code, file
// system metadata and zeros reach the count easily.
constexpr unsigned structured_count = 32;

bool looks_structured(std::span<const std::uint8_t> sector)
{
    std::array<unsigned, 256> counts{};
    for (std::uint8_t byte : sector)
        if (++counts[byte] >= structured_count)
            return true;
    return false;
}

// Positions (bytes into the concatenated data runs) of the sectors to check, each a multiple of 512.
std::set<std::uint64_t> sample_positions(std::uint64_t total_bytes)
{
    std::set<std::uint64_t> positions;
    const std::uint64_t sectors = total_bytes / legacy_qcow_sector_size;
    for (std::uint64_t i = 0; i < std::min(sectors, leading_samples); ++i)
        positions.insert(i * legacy_qcow_sector_size);
    for (std::uint64_t i = 0; i < spread_samples && sectors > 0; ++i)
        positions.insert(sectors * i / spread_samples * legacy_qcow_sector_size);
    return positions;
}

}  // namespace

SecureBytes unlock_legacy_aes(const File& file, const ClusterMap& map, const SecureBytes& password,
                              const std::string& where)
{
    SecureBytes key = legacy_qcow_key(password);
    if (map.data_bytes == 0)
        return key;

    const AesCbcPlain64 cipher(key);
    const std::set<std::uint64_t> positions = sample_positions(map.data_bytes);
    std::vector<std::uint8_t> sector(legacy_qcow_sector_size);
    std::uint64_t run_start = 0;
    auto run = map.runs.begin();
    for (std::uint64_t position : positions) {
        while (run != map.runs.end() && position >= run_start + run->length) {
            run_start += run->length;
            ++run;
        }
        if (run == map.runs.end())
            break;
        const std::uint64_t offset_in_run = position - run_start;
        // A file may end inside its last cluster; QEMU reads the missing bytes as zeros.
        std::fill(sector.begin(), sector.end(), 0);
        file.read_at(run->host_offset + offset_in_run, sector);
        cipher.decrypt_units(sector, run->first_sector + offset_in_run / legacy_qcow_sector_size);
        if (looks_structured(sector))
            return key;
    }
    throw WrongKey(where + ": the password does not decrypt the legacy qcow AES image: none of " +
                   std::to_string(positions.size()) + " sampled sectors decrypts to structured data (legacy AES "
                   "stores no key check, so vmcrypt checks the data); check the password. Nothing was written");
}

}  // namespace vmcrypt::qcow2
