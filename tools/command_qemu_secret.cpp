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

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace vmcrypt::cli {

namespace {

// Creates `path` with mode 0600 and writes `text` to it. An existing file is never replaced, so a
// mistyped name cannot overwrite another file, and the secret never sits in a file others can read.
void write_secret_file(const std::string& path, const SecureBytes& text)
{
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            throw UsageError(path + ": the file exists; vmcrypt never overwrites it, so remove it or choose "
                                    "another --output name");
        throw IoError(path + ": creating the secret file failed: " + std::strerror(errno));
    }

    std::size_t written = 0;
    while (written < text.size()) {
        const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            const int error = errno;
            ::close(fd);
            ::unlink(path.c_str());
            throw IoError(path + ": writing the secret failed: " + std::strerror(error));
        }
        written += static_cast<std::size_t>(n);
    }
    if (::close(fd) != 0)
        throw IoError(path + ": writing the secret failed: " + std::strerror(errno));
}

}  // namespace

int run_qemu_secret(const GlobalOptions& global, const QemuSecretCommandOptions& options)
{
    // Checked before the key is unlocked, so a typo costs no KMS round trip or passphrase prompt.
    if (!qcow2::is_qemu_object_id(options.id))
        throw UsageError("--id: \"" + options.id + "\" is not a QEMU object id; use a letter followed by letters, "
                         "digits, '-', '.' or '_' (for example sec0)");
    const std::string form = !options.form.empty() ? options.form : options.output.empty() ? "object" : "raw";
    if (!options.output.empty() && form == "object")
        throw UsageError("--output writes the secret itself for secret,id=ID,file=FILE, so it takes --form raw "
                         "(the default with --output) or --form libvirt, not --form object");
    if (!options.output.empty() && std::filesystem::exists(options.output))
        throw UsageError(options.output + ": the file exists; vmcrypt never overwrites it, so remove it or choose "
                                          "another --output name");

    std::error_code ec;
    if (!std::filesystem::exists(options.disk, ec))
        throw InvalidInput(options.disk + ": file not found; check the path of the disk");
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
    if (form == "object")
        text = qcow2::qemu_secret_object(secret, options.id);
    else if (form == "libvirt")
        text = qcow2::libvirt_secret_value(secret);
    else
        text = secret;

    if (!options.output.empty()) {
        write_secret_file(options.output, text);
        if (global.json) {
            nlohmann::json result = {{"schema", "vmcrypt-qemu-secret/1"}, {"disk", options.disk},
                                     {"form", form}, {"file", options.output}};
            std::printf("%s\n", result.dump(2).c_str());
        }
        return 0;
    }

    std::string line(text.begin(), text.end());
    if (global.json) {
        nlohmann::json result = {{"schema", "vmcrypt-qemu-secret/1"}, {"disk", options.disk}, {"form", form},
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
