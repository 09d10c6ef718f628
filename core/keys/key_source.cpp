#include "core/keys/key_source.hpp"

#include <ctime>

namespace vmcrypt {

KeySlot seal_new_slot(KeySource& source, const SecureBytes& dek)
{
    KeySlot slot = source.seal(dek);

    std::time_t now = std::time(nullptr);
    std::tm utc{};
    ::gmtime_r(&now, &utc);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
    slot.params["created"] = text;
    return slot;
}

}  // namespace vmcrypt
