#include "core/engine/resume_hint.hpp"

#include "core/text/shell_words.hpp"

#include <utility>

namespace vmcrypt {

namespace {

// NOTE: Process-wide on purpose. Hints are built deep in the engine and one operation runs per process,
// so passing the CLI's words through every layer would only put command-line details into core's interfaces.
std::vector<std::string>& key_arguments()
{
    static std::vector<std::string> arguments;
    return arguments;
}

}  // namespace

void set_resume_key_arguments(std::vector<std::string> arguments)
{
    key_arguments() = std::move(arguments);
}

std::string resume_command(Operation operation, const std::filesystem::path& path)
{
    std::vector<std::string> words{"vmcrypt", to_string(operation)};
    if (operation == Operation::rekey)
        words.push_back("--deep");
    words.insert(words.end(), key_arguments().begin(), key_arguments().end());
    words.push_back(path.string());
    return shell_command(words);
}

}  // namespace vmcrypt
