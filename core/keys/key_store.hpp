#pragma once
// The local key store: a directory (mode 0700) with one file per KEK, "<uuid>.kek" (mode 0600), holding the
// KEK as 64 hex digits. The disk's key slot records the UUID. This is the default key source, so that
// `vmcrypt encrypt disk.vmdk` works with no key server.

#include "core/keys/key_source.hpp"

#include <filesystem>
#include <optional>

namespace vmcrypt {

// The key store directory: $VMCRYPT_KEYSTORE, else $XDG_DATA_HOME/vmcrypt/keys, else
// $HOME/.local/share/vmcrypt/keys.
std::filesystem::path default_key_store_path();

class KeyStoreSource final : public KeySource {
public:
    // kek_id selects an existing KEK for sealing; without it seal() creates a new KEK.
    KeyStoreSource(std::filesystem::path directory, std::optional<std::string> kek_id);

    std::string slot_type() const override { return "keystore"; }
    std::string description() const override;
    void check_ready() override;
    KeySlot seal(const SecureBytes& dek) override;
    SecureBytes unseal(const KeySlot& slot) override;
    void discard_sealed() noexcept override;
    std::unique_ptr<KeySource> same_kek_sealer(const KeySlot& slot) override;

    const std::filesystem::path& directory() const { return directory_; }

private:
    SecureBytes load_kek(const std::string& kek_id) const;
    std::string create_kek();

    std::filesystem::path directory_;
    std::optional<std::string> kek_id_;
    std::optional<std::string> created_kek_id_;  // a KEK this object created, until the disk uses it
};

}  // namespace vmcrypt
