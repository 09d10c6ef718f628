#pragma once
// KEKs kept by a KMS, spoken to over KMIP 1.1. The key slot records the provider id and the key's Unique
// Identifier: "type=kmip;key=<uid>;provider=<id>;wrap=aes-kw;dek=...". The provider's servers and
// certificates come from the KMS configuration (kms_config.hpp), so servers can move without touching
// the disks.
//
// Sealing creates a new AES-256 key on the KMS, activates it and fetches it, or, with an existing key's
// UID, fetches that key if it is Active. Unsealing fetches the key named by the slot whatever its state,
// so a disk stays decryptable as long as the KMS hands the key out. The KEK is held only inside seal()
// and unseal(), in SecureBytes, and never written anywhere.

#include "core/keys/key_source.hpp"

#include <filesystem>
#include <memory>
#include <optional>

namespace vmcrypt {

namespace kmip {
struct KmsConfig;
class ProviderSession;
}  // namespace kmip

class KmipSource final : public KeySource {
public:
    // `provider_id` is the provider that seal() uses (unsealing takes it from the slot); `key_uid` names an
    // existing key to seal with instead of creating one. The configuration file is read on first use.
    KmipSource(std::filesystem::path config_file, std::optional<std::string> provider_id,
               std::optional<std::string> key_uid);
    ~KmipSource() override;

    std::string slot_type() const override { return "kmip"; }
    std::string description() const override;
    void check_ready() override;
    KeySlot seal(const SecureBytes& dek) override;
    SecureBytes unseal(const KeySlot& slot) override;
    // Revokes and destroys a key that seal() created; on failure it logs a warning naming the key.
    void discard_sealed() noexcept override;
    // A source that seals with the slot's existing KMS key, for a deep rekey that keeps the KEK.
    std::unique_ptr<KeySource> same_kek_sealer(const KeySlot& slot) override;

private:
    const kmip::KmsConfig& config();
    // The key's material, or KeyUnavailable naming its state when it is not Active.
    SecureBytes fetch_active_key(kmip::ProviderSession& session, const std::string& uid);

    std::filesystem::path config_file_;
    std::optional<std::string> provider_id_;
    std::optional<std::string> key_uid_;
    std::unique_ptr<kmip::KmsConfig> config_;
    std::optional<std::string> created_uid_;  // a key this object created, until the disk uses it
};

// The prefix of the Name of keys that encrypt creates ("vmcrypt-kek-<uuid>").
inline constexpr const char* kmip_key_name_prefix = "vmcrypt-kek-";

}  // namespace vmcrypt
