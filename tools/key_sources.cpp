#include "tools/key_sources.hpp"

#include "core/error.hpp"
#include "core/keys/key_file_source.hpp"
#include "core/keys/key_store.hpp"
#include "core/keys/kmip_source.hpp"
#include "core/kmip/kms_config.hpp"
#include "core/keys/passphrase_source.hpp"
#include "tools/passphrase_input.hpp"

#include <cstdlib>
#include <unistd.h>

namespace vmcrypt::cli {

namespace {

// A passphrase asked on the terminal only when a passphrase slot is actually tried.
class PromptedPassphraseSource final : public KeySource {
public:
    std::string slot_type() const override { return "passphrase"; }
    std::string description() const override { return "passphrase from the terminal"; }
    void check_ready() override {}
    KeySlot seal(const SecureBytes&) override { throw UsageError("encrypt: a prompted passphrase must be read first"); }
    SecureBytes unseal(const KeySlot& slot) override
    {
        if (!inner_)
            inner_ = std::make_unique<PassphraseSource>(prompt_passphrase("Passphrase: ", false),
                                                        description(), Argon2Parameters{});
        return inner_->unseal(slot);
    }

private:
    std::unique_ptr<PassphraseSource> inner_;
};

}  // namespace

KeySources make_key_sources(const KeyOptions& options, Operation operation)
{
    KeySources sources;
    const bool encrypting = operation == Operation::encrypt;

    if (options.key_file)
        sources.push_back(std::make_unique<KeyFileSource>(*options.key_file));

    Argon2Parameters argon2{options.pbkdf_memory_kib, options.pbkdf_iterations, options.pbkdf_parallel};
    char* environment_passphrase = std::getenv("VMCRYPT_PASSPHRASE");
    if (options.passphrase_file) {
        sources.push_back(std::make_unique<PassphraseSource>(read_passphrase_file(*options.passphrase_file),
                                                             "passphrase file " + *options.passphrase_file, argon2));
    } else if (options.passphrase_fd) {
        sources.push_back(std::make_unique<PassphraseSource>(
            read_passphrase_fd(*options.passphrase_fd), "passphrase from descriptor " + std::to_string(*options.passphrase_fd),
            argon2));
    } else if (options.passphrase_prompt) {
        sources.push_back(std::make_unique<PassphraseSource>(
            prompt_passphrase(encrypting ? "New passphrase: " : "Passphrase: ", encrypting), "passphrase from the terminal",
            argon2));
    } else if (environment_passphrase && *environment_passphrase) {
        std::string_view text(environment_passphrase);
        sources.push_back(std::make_unique<PassphraseSource>(SecureBytes(text.begin(), text.end()),
                                                             "passphrase from VMCRYPT_PASSPHRASE", argon2));
        // The environment copy would otherwise stay readable in /proc/PID/environ and in memory.
        Botan::secure_scrub_memory(environment_passphrase, text.size());
        ::unsetenv("VMCRYPT_PASSPHRASE");
    }

    // KMS keys: encrypt seals with the provider given. Decrypt reads the provider from the disk's key slot,
    // so it opens the KMS configuration only when it tries a kmip slot.
    const std::filesystem::path kms_config = options.kms_config ? std::filesystem::path(*options.kms_config)
                                                                : kmip::default_kms_config_path();
    if (encrypting && options.kms_provider)
        sources.push_back(std::make_unique<KmipSource>(kms_config, options.kms_provider, options.kms_key));

    const bool keystore_requested = options.keystore || options.kek_id;
    const bool explicit_key = options.key_file || options.passphrase_file || options.passphrase_fd ||
                              options.passphrase_prompt || options.kms_provider || options.kms_config;
    if (!encrypting && (options.kms_config || !explicit_key))
        sources.push_back(std::make_unique<KmipSource>(kms_config, std::nullopt, std::nullopt));
    // decrypt also falls back to the key store when only VMCRYPT_PASSPHRASE is set.
    if (sources.empty() || keystore_requested || (!encrypting && !explicit_key)) {
        std::filesystem::path directory = options.keystore ? std::filesystem::path(*options.keystore)
                                                           : default_key_store_path();
        sources.push_back(std::make_unique<KeyStoreSource>(directory, options.kek_id));
    }

    // decrypt with no explicit key: a passphrase slot may still be opened interactively.
    if (!encrypting && !explicit_key && ::isatty(STDIN_FILENO))
        sources.push_back(std::make_unique<PromptedPassphraseSource>());
    return sources;
}

std::vector<std::string> resume_key_arguments(const KeyOptions& options)
{
    std::vector<std::string> words;
    auto add = [&words](const char* name, const std::optional<std::string>& value) {
        if (value) {
            words.emplace_back(name);
            words.push_back(*value);
        }
    };
    add("--key-file", options.key_file);
    add("--passphrase-file", options.passphrase_file);
    if (options.passphrase_fd) {
        words.emplace_back("--passphrase-fd");
        words.push_back(std::to_string(*options.passphrase_fd));
    }
    if (options.passphrase_prompt)
        words.emplace_back("--passphrase");
    add("--keystore", options.keystore);
    add("--kms-config", options.kms_config);
    add("--kms-provider", options.kms_provider);  // encrypt accepts --kms-config only together with it
    return words;
}

}  // namespace vmcrypt::cli
