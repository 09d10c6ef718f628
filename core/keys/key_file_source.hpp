#pragma once
// A KEK given directly in a file (--key-file): 32 raw bytes or 64 hex digits.

#include "core/keys/key_source.hpp"

#include <filesystem>

namespace vmcrypt {

class KeyFileSource final : public KeySource {
public:
    explicit KeyFileSource(std::filesystem::path path);

    std::string slot_type() const override { return "key-file"; }
    std::string description() const override { return "key file " + path_.string(); }
    void check_ready() override;
    KeySlot seal(const SecureBytes& dek) override;
    SecureBytes unseal(const KeySlot& slot) override;
    std::unique_ptr<KeySource> same_kek_sealer(const KeySlot&) override
    {
        return std::make_unique<KeyFileSource>(*this);
    }

private:
    const SecureBytes& kek();

    std::filesystem::path path_;
    SecureBytes kek_;
};

}  // namespace vmcrypt
