#pragma once
// The command that an error message names to finish an unfinished operation. It must work as printed,
// so it contains the same subcommand, the key options that unlock the disk, and the shell-quoted disk path.

#include "core/engine/journal.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt {

// Records the key options of this run ("--key-file", "k.bin", ...) for every later resume hint. The CLI
// calls it once after parsing. `owner` is the operation this run performs (key_change for a shallow
// rekey and keys add or remove), `unlock` the options that open the disk now and `new_keys` a rekey's
// --new-* options. Only option names, file names and descriptor numbers belong here. A passphrase
// never reaches argv, so it never reaches a hint either.
void set_resume_key_arguments(Operation owner, std::vector<std::string> unlock,
                              std::vector<std::string> new_keys = {});

// Returns the resume command, for example "vmcrypt decrypt --key-file k.bin 'my disk.vmdk'". The run's
// own operation gets all its key options. Another unfinished encrypt or decrypt gets the options that
// unlock the disk. An unfinished deep rekey opens only with a key of its new slots, which another
// command was not given, so its command is followed by a note naming the key to add.
std::string resume_command(Operation operation, const std::filesystem::path& path);

// Returns `words` ("vmcrypt", "keys", "remove", "--slot", "1"), then the options that unlock the disk
// in this run, then the path, shell-quoted: a command that a message names besides the resume command.
std::string command_with_unlock_keys(std::vector<std::string> words, const std::filesystem::path& path);

}  // namespace vmcrypt
