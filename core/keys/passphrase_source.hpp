#pragma once
// A passphrase turned into a KEK with Argon2id; the salt and cost parameters live in the key slot.
// The passphrase itself is read by the CLI (file, descriptor, environment or terminal), never from argv.

#include "core/crypto/kdf.hpp"
#include "core/keys/key_source.hpp"

namespace vmcrypt {

class PassphraseSource final : public KeySource {
public:
    // origin describes where the passphrase came from, for messages ("passphrase file p.txt").
    PassphraseSource(SecureBytes passphrase, std::string origin, Argon2Parameters parameters);

    std::string slot_type() const override { return "passphrase"; }
    std::string description() const override { return origin_; }
    void check_ready() override;
    KeySlot seal(const SecureBytes& dek) override;
    SecureBytes unseal(const KeySlot& slot) override;
    // Seals with the same passphrase and the Argon2id cost of `slot`, under a new salt.
    std::unique_ptr<KeySource> same_kek_sealer(const KeySlot& slot) override;
    const SecureBytes* passphrase() const override { return &passphrase_; }

private:
    SecureBytes passphrase_;
    std::string origin_;
    Argon2Parameters parameters_;
};

}  // namespace vmcrypt
