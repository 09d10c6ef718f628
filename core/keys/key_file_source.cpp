#include "core/keys/key_file_source.hpp"

#include "core/crypto/key_wrap.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/keys/key_text.hpp"

namespace vmcrypt {

KeyFileSource::KeyFileSource(std::filesystem::path path) : path_(std::move(path)) {}

const SecureBytes& KeyFileSource::kek()
{
    if (kek_.empty()) {
        std::string content;
        try {
            content = read_small_file(path_, 4096);
        } catch (const Error& e) {
            throw KeyUnavailable(std::string(e.what()) + " (the key file given to --key-file)");
        }
        kek_ = parse_kek_text(content, path_.string());
        Botan::secure_scrub_memory(content.data(), content.size());
    }
    return kek_;
}

void KeyFileSource::check_ready()
{
    kek();
}

KeySlot KeyFileSource::seal(const SecureBytes& dek)
{
    KeySlot slot;
    slot.type = slot_type();
    slot.params["kek"] = kek_fingerprint(kek());
    slot.wrapped_dek = wrap_key(kek(), dek);
    return slot;
}

SecureBytes KeyFileSource::unseal(const KeySlot& slot)
{
    const std::string& expected = slot.param("kek", "key slot");
    if (expected != kek_fingerprint(kek()))
        throw WrongKey(path_.string() + ": this key file is not the KEK of the disk's key-file slot (KEK id " +
                       expected + ")");
    return unwrap_key(kek(), slot.wrapped_dek);
}

}  // namespace vmcrypt
