#include "formats/qcow2/luks1_report.hpp"

namespace vmcrypt::qcow2 {

nlohmann::json luks_header_json(const LuksHeader& header)
{
    nlohmann::json slots = nlohmann::json::array();
    for (std::size_t i = 0; i < header.slots.size(); ++i) {
        const LuksKeySlot& slot = header.slots[i];
        slots.push_back({{"slot", i},
                         {"enabled", slot.active},
                         {"iterations", slot.active ? slot.iterations : 0},
                         {"keyMaterialOffset", slot.key_material_offset},
                         {"stripes", slot.stripes}});
    }
    return {{"version", header.version},
            {"cipher", header.cipher_name + "-" + header.cipher_mode},
            {"hash", header.hash_spec},
            {"keyBytes", header.key_bytes},
            {"payloadOffset", header.payload_offset},
            {"uuid", header.uuid},
            {"masterKeyDigestIterations", header.mk_digest_iterations},
            {"keySlots", slots}};
}

}  // namespace vmcrypt::qcow2
