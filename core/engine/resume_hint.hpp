#pragma once
// The command that an error message names to finish an unfinished operation. It must work as printed,
// so it contains the same subcommand, the key options that unlock the disk, and the shell-quoted disk path.

#include "core/engine/journal.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt {

// Records the key options of this run ("--key-file", "k.bin", ...) for every later resume hint. The CLI
// calls it once after parsing. Only option names, file names and descriptor numbers belong here. A
// passphrase never reaches argv, so it never reaches a hint either.
void set_resume_key_arguments(std::vector<std::string> arguments);

// Returns the resume command, for example "vmcrypt decrypt --key-file k.bin 'my disk.vmdk'".
std::string resume_command(Operation operation, const std::filesystem::path& path);

}  // namespace vmcrypt
