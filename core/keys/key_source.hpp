#pragma once
// A key source seals the DEK into a key slot and unseals it again. The local key store, key files and
// passphrases implement it now; the KMIP client plugs in the same way.

#include "core/crypto/secure.hpp"
#include "core/keys/key_slot.hpp"

#include <memory>
#include <optional>
#include <string>

namespace vmcrypt {

class KeySource {
public:
    virtual ~KeySource() = default;

    // The slot type this source writes and reads ("keystore", "key-file", "passphrase").
    virtual std::string slot_type() const = 0;

    // A phrase for messages, e.g. "key file /etc/kek.bin". Never contains a secret.
    virtual std::string description() const = 0;

    // Checks that sealing can work (permissions, readable files) without changing anything. Runs before
    // the first write to the disk.
    virtual void check_ready() = 0;

    // Wraps the DEK into a new slot. May create a KEK (the key store does), durably, before returning.
    virtual KeySlot seal(const SecureBytes& dek) = 0;

    // Unwraps the DEK from a slot of this source's type. Throws WrongKey (UnwrapFailed) when the key does
    // not match and KeyUnavailable when the KEK cannot be found.
    virtual SecureBytes unseal(const KeySlot& slot) = 0;

    // Undoes the side effects of seal() when the operation fails before the disk refers to the slot
    // (the key store deletes a KEK it created). Never throws.
    virtual void discard_sealed() noexcept {}

    // A source whose seal() wraps under the same KEK as `slot`, which this source has unsealed: a deep
    // rekey uses it to wrap the new DEK without changing the KEK. nullptr when the source cannot.
    virtual std::unique_ptr<KeySource> same_kek_sealer(const KeySlot& slot)
    {
        (void)slot;
        return nullptr;
    }

    // The passphrase itself, for a disk whose other encryption is unlocked by a passphrase (a QEMU LUKS
    // key slot); nullptr for sources that hold no passphrase.
    virtual const SecureBytes* passphrase() const { return nullptr; }
};

// Seals the DEK with `source` and records the slot's creation time (the "created" parameter, UTC, ISO
// 8601 to the second). Every new slot of every operation is made here.
KeySlot seal_new_slot(KeySource& source, const SecureBytes& dek);

}  // namespace vmcrypt
