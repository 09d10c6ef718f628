#include "core/keys/kmip_source.hpp"

#include "core/crypto/key_wrap.hpp"
#include "core/error.hpp"
#include "core/kmip/provider_session.hpp"
#include "core/log.hpp"

#include <botan/system_rng.h>
#include <botan/uuid.h>

namespace vmcrypt {

namespace {

// The characters a key slot value may contain (see KeySlot::parse).
bool fits_key_slot(const std::string& text)
{
    if (text.empty())
        return false;
    for (char c : text) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '_' || c == '.' || c == '+' || c == '/' || c == '=' || c == ':';
        if (!ok)
            return false;
    }
    return true;
}

std::string new_key_name()
{
    Botan::System_RNG rng;
    std::string uuid = Botan::UUID(rng).to_string();
    for (char& c : uuid)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return kmip_key_name_prefix + uuid;
}

std::string quoted_key(const std::string& uid)
{
    return "key \"" + uid + "\"";
}

}  // namespace

KmipSource::KmipSource(std::filesystem::path config_file, std::optional<std::string> provider_id,
                       std::optional<std::string> key_uid)
    : config_file_(std::move(config_file)), provider_id_(std::move(provider_id)), key_uid_(std::move(key_uid))
{
}

KmipSource::~KmipSource() = default;

std::string KmipSource::description() const
{
    return provider_id_ ? "KMS provider " + *provider_id_ : "KMS configuration " + config_file_.string();
}

const kmip::KmsConfig& KmipSource::config()
{
    if (!config_)
        config_ = std::make_unique<kmip::KmsConfig>(kmip::KmsConfig::load(config_file_));
    return *config_;
}

void KmipSource::check_ready()
{
    if (!provider_id_)
        throw UsageError("a KMS key needs --kms-provider ID (a provider of " + config_file_.string() + ")");
    if (key_uid_ && !fits_key_slot(*key_uid_))
        throw UsageError("--kms-key: \"" + *key_uid_ + "\" contains characters a key slot cannot store");
    // Loading the certificates and the password here reports a broken provider before anything happens.
    kmip::ProviderSession session(config().provider(*provider_id_));
}

SecureBytes KmipSource::fetch_active_key(kmip::ProviderSession& session, const std::string& uid)
{
    const std::string& provider_id = session.provider().id;
    std::uint32_t state = 0;
    session.run("Get Attributes (State) of " + quoted_key(uid), [&](kmip::Client& client) { state = client.get_state(uid); });
    // In the KMIP key state model only a Pre-Active key can still become Active.
    const bool can_activate = state == static_cast<std::uint32_t>(kmip::KeyState::pre_active);
    if (state != static_cast<std::uint32_t>(kmip::KeyState::active))
        throw KeyUnavailable("KMS provider \"" + provider_id + "\": " + quoted_key(uid) + " is " +
                             kmip::key_state_name(state) + ", not Active, so it is not used for new encryption; " +
                             (can_activate ? "activate it on the KMS or leave out --kms-key to create a new key"
                                           : "name an Active key, or leave out --kms-key to create a new key"));
    SecureBytes kek;
    session.run("Get of " + quoted_key(uid), [&](kmip::Client& client) { kek = client.get_aes256_key(uid); });
    return kek;
}

KeySlot KmipSource::seal(const SecureBytes& dek)
{
    check_ready();
    const std::string& provider_id = *provider_id_;
    kmip::ProviderSession session(config().provider(provider_id));

    std::string uid;
    if (key_uid_) {
        uid = *key_uid_;
    } else {
        // A new key for this disk: Create (Pre-Active on most servers), then Activate.
        const std::string name = new_key_name();
        session.run("Create of a new key", [&](kmip::Client& client) {
            uid = client.create_aes256_key(name, kmip::kek_usage_mask);
        });
        created_uid_ = uid;
        key_uid_ = uid;  // a second seal() on this source reuses the key
        log_info("KMS provider \"" + provider_id + "\": created " + quoted_key(uid) + " named " + name + " on " +
                 session.current_server());
        if (!fits_key_slot(uid))
            throw KeyUnavailable("KMS provider \"" + provider_id + "\" named the new key \"" + uid +
                                 "\", which contains characters a key slot cannot store");
        session.run("Activate of " + quoted_key(uid), [&](kmip::Client& client) { client.activate(uid); });
    }

    SecureBytes kek = fetch_active_key(session, uid);
    KeySlot slot;
    slot.type = slot_type();
    slot.params["provider"] = provider_id;
    slot.params["key"] = uid;
    slot.wrapped_dek = wrap_key(kek, dek);
    return slot;
}

std::unique_ptr<KeySource> KmipSource::same_kek_sealer(const KeySlot& slot)
{
    return std::make_unique<KmipSource>(config_file_, slot.param("provider", "kmip key slot"),
                                        slot.param("key", "kmip key slot"));
}

SecureBytes KmipSource::unseal(const KeySlot& slot)
{
    const std::string& provider_id = slot.param("provider", "kmip key slot");
    const std::string& uid = slot.param("key", "kmip key slot");
    const kmip::KmsProvider* provider = nullptr;
    try {
        provider = &config().provider(provider_id);
    } catch (const KeyUnavailable& e) {
        throw KeyUnavailable(std::string(e.what()) + "; the disk's key slot names KMS provider \"" + provider_id +
                             "\": add it to the KMS configuration or pass --kms-config");
    }

    kmip::ProviderSession session(*provider);
    SecureBytes kek;
    session.run("Get of " + quoted_key(uid), [&](kmip::Client& client) { kek = client.get_aes256_key(uid); });

    // A key that is no longer Active still decrypts, but the disk should move to a new key.
    try {
        std::uint32_t state = 0;
        session.run("Get Attributes (State) of " + quoted_key(uid),
                    [&](kmip::Client& client) { state = client.get_state(uid); });
        if (state != static_cast<std::uint32_t>(kmip::KeyState::active))
            log_warning("KMS provider \"" + provider_id + "\": " + quoted_key(uid) + " is " +
                        kmip::key_state_name(state) + "; it still opens the disk's key slot, but if the disk stays "
                        "encrypted, move it to a new key with vmcrypt rekey");
    } catch (const KeyUnavailable& e) {
        log_debug(std::string("could not read the state of the KMS key: ") + e.what());
    }
    return unwrap_key(kek, slot.wrapped_dek);
}

void KmipSource::discard_sealed() noexcept
{
    if (!created_uid_)
        return;
    const std::string uid = *created_uid_;
    created_uid_.reset();
    key_uid_.reset();
    try {
        kmip::ProviderSession session(config().provider(*provider_id_));
        // Revoke moves an Active key to Deactivated, which Destroy needs; a Pre-Active key is destroyed as is.
        try {
            session.run("Revoke of " + quoted_key(uid), [&](kmip::Client& client) {
                client.revoke(uid, kmip::RevocationReason::cessation_of_operation, "vmcrypt encrypt failed");
            });
        } catch (const KeyUnavailable& e) {
            log_debug(std::string("revoking the unused KMS key failed: ") + e.what());
        }
        session.run("Destroy of " + quoted_key(uid), [&](kmip::Client& client) { client.destroy(uid); });
        log_info("KMS provider \"" + *provider_id_ + "\": destroyed the unused " + quoted_key(uid));
    } catch (const std::exception& e) {
        log_warning("KMS provider \"" + provider_id_.value_or("?") + "\": the unused " + quoted_key(uid) +
                    " could not be destroyed (" + e.what() + "); remove it on the KMS");
    }
}

}  // namespace vmcrypt
