// terminal_line: how vmcrypt prints text that came from a disk or a command line.

#include "core/text/terminal_text.hpp"

#include <gtest/gtest.h>

#include <string>

using vmcrypt::terminal_line;

TEST(TerminalLine, KeepsPrintableTextAndUtf8)
{
    EXPECT_EQ(terminal_line("disk \"a b\".vmdk: ok"), "disk \"a b\".vmdk: ok");
    EXPECT_EQ(terminal_line("Datenträger.vmdk"), "Datenträger.vmdk");
}

TEST(TerminalLine, FoldsLineBreaksAndTabsIntoSpaces)
{
    EXPECT_EQ(terminal_line("first\r\nsecond\tthird\n"), "first  second third");
}

TEST(TerminalLine, EscapesEscapeSequencesAndOtherControlBytes)
{
    // An ESC sequence that would clear the screen, a bell, a NUL and DEL.
    EXPECT_EQ(terminal_line(std::string("a\x1b[2Jb\x07", 7) + std::string(1, '\0') + "\x7f"),
              "a\\x1b[2Jb\\x07\\x00\\x7f");
}
