#include "core/keys/passphrase_source.hpp"

#include "core/crypto/key_wrap.hpp"
#include "core/crypto/random.hpp"
#include "core/error.hpp"

#include <botan/base64.h>
#include <botan/exceptn.h>

#include <charconv>

namespace vmcrypt {

namespace {

constexpr std::size_t salt_size = 16;

std::uint32_t parse_parameter(const KeySlot& slot, const std::string& name)
{
    const std::string& text = slot.param(name, "passphrase key slot");
    std::uint32_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size())
        throw InvalidInput("passphrase key slot: Argon2id parameter " + name + "=\"" + text + "\" is not a number");
    return value;
}

}  // namespace

PassphraseSource::PassphraseSource(SecureBytes passphrase, std::string origin, Argon2Parameters parameters)
    : passphrase_(std::move(passphrase)), origin_(std::move(origin)), parameters_(parameters)
{
}

void PassphraseSource::check_ready()
{
    if (passphrase_.empty())
        throw KeyUnavailable(origin_ + ": the passphrase is empty");
}

KeySlot PassphraseSource::seal(const SecureBytes& dek)
{
    SecureBytes salt = random_bytes(salt_size);
    SecureBytes kek = argon2id(passphrase_, salt, parameters_, kek_size);

    KeySlot slot;
    slot.type = slot_type();
    slot.params["kdf"] = "argon2id";
    slot.params["m"] = std::to_string(parameters_.memory_kib);
    slot.params["t"] = std::to_string(parameters_.iterations);
    slot.params["p"] = std::to_string(parameters_.parallelism);
    slot.params["salt"] = Botan::base64_encode(salt.data(), salt.size());
    slot.wrapped_dek = wrap_key(kek, dek);
    return slot;
}

std::unique_ptr<KeySource> PassphraseSource::same_kek_sealer(const KeySlot& slot)
{
    Argon2Parameters parameters;
    parameters.memory_kib = parse_parameter(slot, "m");
    parameters.iterations = parse_parameter(slot, "t");
    parameters.parallelism = parse_parameter(slot, "p");
    return std::make_unique<PassphraseSource>(passphrase_, origin_, parameters);
}

SecureBytes PassphraseSource::unseal(const KeySlot& slot)
{
    if (slot.param("kdf", "passphrase key slot") != "argon2id")
        throw UnsupportedInput("passphrase key slot: kdf \"" + slot.param("kdf", "") + "\" is not supported");

    Argon2Parameters parameters;
    parameters.memory_kib = parse_parameter(slot, "m");
    parameters.iterations = parse_parameter(slot, "t");
    parameters.parallelism = parse_parameter(slot, "p");

    SecureBytes salt;
    try {
        salt = Botan::base64_decode(slot.param("salt", "passphrase key slot"));
    } catch (const Botan::Exception&) {
        throw InvalidInput("passphrase key slot: salt is not valid base64");
    }

    SecureBytes kek = argon2id(passphrase_, salt, parameters, kek_size);
    try {
        return unwrap_key(kek, slot.wrapped_dek);
    } catch (const UnwrapFailed&) {
        throw UnwrapFailed(origin_ + ": wrong passphrase (it does not unlock the disk's passphrase key slot)");
    }
}

}  // namespace vmcrypt
