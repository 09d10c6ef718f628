#include "core/engine/fault_injection.hpp"

#include "core/error.hpp"

#include <csignal>
#include <cstdlib>
#include <string>
#include <unistd.h>

namespace vmcrypt {

namespace {

struct FaultSpec {
    bool active = false;
    std::string name;
    long count = 1;
    std::string action = "kill";
    long hits = 0;
};

FaultSpec load_spec()
{
    FaultSpec spec;
    const char* text = std::getenv("VMCRYPT_FAULT");
    if (!text || !*text)
        return spec;

    std::string value = text;
    std::size_t first = value.find(':');
    std::size_t second = first == std::string::npos ? std::string::npos : value.find(':', first + 1);
    spec.name = value.substr(0, first);
    if (first != std::string::npos)
        spec.count = std::strtol(value.c_str() + first + 1, nullptr, 10);
    if (second != std::string::npos)
        spec.action = value.substr(second + 1);
    spec.active = !spec.name.empty() && spec.count > 0;
    return spec;
}

}  // namespace

void fault_point(std::string_view name)
{
    static FaultSpec spec = load_spec();
    if (!spec.active || name != spec.name)
        return;
    if (++spec.hits != spec.count)
        return;

    if (spec.action == "eio")
        throw IoError("injected I/O error at fault point " + spec.name);
    if (spec.action == "enospc")
        throw NoSpace("injected ENOSPC at fault point " + spec.name + ": No space left on device");
    ::kill(::getpid(), SIGKILL);
    ::_exit(137);  // not reached
}

}  // namespace vmcrypt
