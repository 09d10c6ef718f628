#pragma once
// Makes text from disk metadata safe to print on a terminal.

#include <string>
#include <string_view>

namespace vmcrypt {

// Returns `text` as one line. Line breaks and tabs become spaces, trailing spaces are dropped, and every
// other control byte (ESC and DEL included) is shown as \xNN. A crafted file name or descriptor value
// then cannot move the cursor or fake a second line of output.
std::string terminal_line(std::string_view text);

}  // namespace vmcrypt
