#pragma once
// Commands that messages tell the user to run must work when pasted into a POSIX shell, whatever the
// file names contain (spaces, quotes, `$(...)`).

#include <string>
#include <vector>

namespace vmcrypt {

// Returns `word` as one shell word. A word of only characters that no shell treats specially stays as it
// is. Any other word is put in single quotes, with each embedded quote written as '\''.
std::string shell_quote(const std::string& word);

// Joins the words with spaces, quoting each one as needed.
std::string shell_command(const std::vector<std::string>& words);

}  // namespace vmcrypt
