#include "core/engine/resume_hint.hpp"

#include "core/text/shell_words.hpp"

#include <utility>

namespace vmcrypt {

namespace {

struct ResumeKeys {
    Operation owner = Operation::encrypt;
    std::vector<std::string> unlock;
    std::vector<std::string> new_keys;
};

// NOTE: Process-wide on purpose. Hints are built deep in the engine and one operation runs per process,
// so passing the CLI's words through every layer would only put command-line details into core's interfaces.
ResumeKeys& resume_keys()
{
    static ResumeKeys keys;
    return keys;
}

}  // namespace

void set_resume_key_arguments(Operation owner, std::vector<std::string> unlock, std::vector<std::string> new_keys)
{
    resume_keys() = {owner, std::move(unlock), std::move(new_keys)};
}

std::string resume_command(Operation operation, const std::filesystem::path& path)
{
    const ResumeKeys& keys = resume_keys();
    const bool own = operation == keys.owner;
    std::vector<std::string> words{"vmcrypt", to_string(operation)};
    if (operation == Operation::rekey)
        words.push_back("--deep");

    if (operation == Operation::rekey && !own) {
        words.push_back(path.string());
        return shell_command(words) + " and the key of the interrupted rekey's new key slots (its --new-* key, "
                                      "given as --key-file, --passphrase-file, --keystore or --kms-provider)";
    }

    words.insert(words.end(), keys.unlock.begin(), keys.unlock.end());
    if (own)
        words.insert(words.end(), keys.new_keys.begin(), keys.new_keys.end());
    words.push_back(path.string());
    return shell_command(words);
}

std::string command_with_unlock_keys(std::vector<std::string> words, const std::filesystem::path& path)
{
    const ResumeKeys& keys = resume_keys();
    words.insert(words.end(), keys.unlock.begin(), keys.unlock.end());
    words.push_back(path.string());
    return shell_command(words);
}

}  // namespace vmcrypt
