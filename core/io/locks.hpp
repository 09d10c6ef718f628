#pragma once
// Locks that keep other programs off a disk while vmcrypt rewrites it.
//
// QEMU (block/file-posix.c) locks one byte per permission with open file description (OFD) locks: bytes
// 100+n for permissions it holds and 200+n for permissions it does not share. An exclusive OFD lock over
// bytes 100..299 of every file of the disk therefore conflicts with any QEMU process that has the image
// open, and with any other vmcrypt run, and it makes a QEMU started later fail to open the image.

#include "core/io/file.hpp"

#include <filesystem>
#include <optional>
#include <string>

namespace vmcrypt {

// Takes the exclusive lock on one file (which must be open read-write). Throws DiskInUse when another
// open file description holds a conflicting lock. The lock lasts until the File is closed.
void lock_exclusive(File& file);

// Describes the conflicting lock on a file without taking one (read-only; for inspect), or nullopt.
std::optional<std::string> find_lock_holder(const File& file);

// The VMware lock folder ("<file>.lck") of a disk file, if one exists.
std::optional<std::filesystem::path> find_vmware_lock(const std::filesystem::path& file);

}  // namespace vmcrypt
