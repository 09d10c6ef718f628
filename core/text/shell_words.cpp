#include "core/text/shell_words.hpp"

#include <cctype>

namespace vmcrypt {

namespace {

bool needs_no_quotes(const std::string& word)
{
    if (word.empty())
        return false;
    for (char c : word) {
        bool plain = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '/' ||
                     c == ':' || c == '=' || c == '@' || c == '%' || c == '+' || c == ',';
        if (!plain)
            return false;
    }
    return true;
}

}  // namespace

std::string shell_quote(const std::string& word)
{
    if (needs_no_quotes(word))
        return word;
    std::string quoted = "'";
    for (char c : word) {
        if (c == '\'')
            quoted += "'\\''";
        else
            quoted += c;
    }
    return quoted + "'";
}

std::string shell_command(const std::vector<std::string>& words)
{
    std::string command;
    for (const std::string& word : words) {
        if (!command.empty())
            command += ' ';
        command += shell_quote(word);
    }
    return command;
}

}  // namespace vmcrypt
