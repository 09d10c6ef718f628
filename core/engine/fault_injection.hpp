#pragma once
// Named fault-injection points for crash tests.
//
// VMCRYPT_FAULT="NAME:COUNT:ACTION" makes the COUNT-th pass through fault point NAME either kill the
// process with SIGKILL (ACTION "kill", a crash at a known place), throw IoError (ACTION "eio", a failed
// write) or throw NoSpace (ACTION "enospc", a full file system). Unset, a fault point costs one branch. The points are listed in vmcrypt(1) under ENVIRONMENT.

#include <string_view>

namespace vmcrypt {

void fault_point(std::string_view name);

}  // namespace vmcrypt
