// qemu-secret: print the LUKS secret of a qcow2 image that vmcrypt encrypted, in the form QEMU or
// libvirt takes, after unlocking the DEK from a key slot. Opens the image read-only and writes nothing.

#include "core/engine/operation.hpp"
#include "core/error.hpp"
#include "formats/open_disk.hpp"
#include "formats/qcow2/qcow2_disk.hpp"
#include "formats/qcow2/qemu_secret.hpp"
#include "tools/commands.hpp"
#include "tools/key_sources.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace vmcrypt::cli {

int run_qemu_secret(const GlobalOptions& global, const QemuSecretCommandOptions& options)
{
    std::error_code ec;
    if (!std::filesystem::exists(options.disk, ec))
        throw InvalidInput(options.disk + ": no such file; check the disk path");
    std::unique_ptr<Disk> disk = open_disk(std::filesystem::weakly_canonical(options.disk), Access::read_only);
    if (!dynamic_cast<qcow2::QcowDisk*>(disk.get()))
        throw WrongDiskState(options.disk + ": qemu-secret applies to qcow2 images only; a " + disk->format() +
                             " disk has no LUKS secret");
    std::optional<RecordFields> record = disk->record();
    if (!record)
        throw WrongDiskState(options.disk + ": the image is not encrypted by vmcrypt (no vmcrypt header extension), "
                                            "so vmcrypt did not derive its LUKS secret");

    KeySources sources = make_key_sources(options.keys, Operation::decrypt);
    SecureBytes dek = unlock_dek(*record, sources, options.disk);
    SecureBytes secret = qcow2::derive_qemu_secret(dek);

    SecureBytes text;
    if (options.form == "object")
        text = qcow2::qemu_secret_object(secret, options.id);
    else if (options.form == "libvirt")
        text = qcow2::libvirt_secret_value(secret);
    else
        text = secret;
    std::string line(text.begin(), text.end());
    if (global.json) {
        nlohmann::json result = {{"schema", "vmcrypt-qemu-secret/1"}, {"disk", options.disk}, {"form", options.form},
                                 {"value", line}};
        std::printf("%s\n", result.dump(2).c_str());
    } else {
        std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
    // NOTE: `line` and the JSON copies live in ordinary std::string memory, which is freed without wiping.
    return 0;
}

}  // namespace vmcrypt::cli
