#include "core/keys/key_store.hpp"

#include "core/crypto/key_wrap.hpp"
#include "core/crypto/random.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/keys/key_text.hpp"

#include <botan/hex.h>
#include <botan/system_rng.h>
#include <botan/uuid.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <sys/stat.h>

namespace vmcrypt {

namespace {

std::string octal_mode(mode_t mode)
{
    char text[8];
    std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
    return text;
}

// Rejects a key store path or KEK file that other users can read or write, with the chmod that fixes it.
void require_private(const std::filesystem::path& path, mode_t fix_mode)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw KeyUnavailable(path.string() + ": cannot be read (key store)");
    if ((st.st_mode & 077) != 0)
        throw KeyUnavailable(path.string() + ": mode " + octal_mode(st.st_mode) +
                             " lets other users reach the KEKs; run: chmod " + octal_mode(fix_mode).substr(1) +
                             " '" + path.string() + "'");
    if (st.st_uid != ::geteuid())
        throw KeyUnavailable(path.string() + ": owned by uid " + std::to_string(st.st_uid) +
                             ", not by the current user; the key store must belong to the user running vmcrypt");
}

bool is_uuid(const std::string& text)
{
    if (text.size() != 36)
        return false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        bool dash = (i == 8 || i == 13 || i == 18 || i == 23);
        if (dash ? c != '-' : !std::isxdigit(static_cast<unsigned char>(c)))
            return false;
    }
    return true;
}

}  // namespace

std::filesystem::path default_key_store_path()
{
    if (const char* explicit_path = std::getenv("VMCRYPT_KEYSTORE"); explicit_path && *explicit_path)
        return explicit_path;
    if (const char* data_home = std::getenv("XDG_DATA_HOME"); data_home && *data_home)
        return std::filesystem::path(data_home) / "vmcrypt" / "keys";
    const char* home = std::getenv("HOME");
    return std::filesystem::path(home && *home ? home : ".") / ".local" / "share" / "vmcrypt" / "keys";
}

KeyStoreSource::KeyStoreSource(std::filesystem::path directory, std::optional<std::string> kek_id)
    : directory_(std::move(directory)), kek_id_(std::move(kek_id))
{
    // Checked here, before the disk is looked at, so a malformed option is a usage error whatever else
    // is wrong. KEK files are named by the lower-case form that create_kek() writes.
    if (kek_id_) {
        if (!is_uuid(*kek_id_))
            throw UsageError("--kek-id: \"" + *kek_id_ + "\" is not a UUID");
        for (char& c : *kek_id_)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
}

std::string KeyStoreSource::description() const
{
    return "key store " + directory_.string();
}

void KeyStoreSource::check_ready()
{
    std::error_code ec;
    if (!std::filesystem::exists(directory_, ec)) {
        if (kek_id_)
            throw KeyUnavailable(directory_.string() + ": key store does not exist, so KEK " + *kek_id_ +
                                 " cannot be found; set VMCRYPT_KEYSTORE or --keystore");
        return;  // seal() creates it
    }
    require_private(directory_, 0700);
    if (kek_id_)
        load_kek(*kek_id_);
}

SecureBytes KeyStoreSource::load_kek(const std::string& kek_id) const
{
    if (!is_uuid(kek_id))
        throw InvalidInput("key slot: KEK id \"" + kek_id + "\" is not a UUID");

    std::filesystem::path path = directory_ / (kek_id + ".kek");
    std::error_code ec;
    if (!std::filesystem::exists(directory_, ec))
        throw KeyUnavailable(directory_.string() + ": key store does not exist; it must hold KEK " + kek_id +
                             " (set VMCRYPT_KEYSTORE or --keystore to the key store that holds it)");
    require_private(directory_, 0700);
    if (!std::filesystem::exists(path, ec))
        throw KeyUnavailable(path.string() + ": KEK " + kek_id + " is not in the key store (set VMCRYPT_KEYSTORE "
                             "or --keystore to the key store that holds it)");
    require_private(path, 0600);
    std::string content;
    try {
        content = read_small_file(path, 4096);
    } catch (const InvalidInput& e) {
        throw KeyUnavailable(std::string(e.what()) + " (a KEK file contains 64 hex digits)");
    }
    SecureBytes kek = parse_kek_text(content, path.string());
    Botan::secure_scrub_memory(content.data(), content.size());
    return kek;
}

std::string KeyStoreSource::create_kek()
{
    std::error_code ec;
    if (!std::filesystem::exists(directory_, ec)) {
        std::filesystem::create_directories(directory_.parent_path(), ec);
        if (::mkdir(directory_.c_str(), 0700) != 0 && errno != EEXIST)
            throw KeyUnavailable(directory_.string() + ": cannot create the key store directory");
        sync_directory(directory_.parent_path());
    }
    require_private(directory_, 0700);

    Botan::System_RNG rng;
    std::string kek_id = Botan::UUID(rng).to_string();
    for (char& c : kek_id)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    SecureBytes kek = random_bytes(kek_size);
    std::string text = Botan::hex_encode(kek.data(), kek.size(), false) + "\n";

    // Write through a temporary name and rename, so a crash never leaves a partial KEK under its real name.
    std::filesystem::path final_path = directory_ / (kek_id + ".kek");
    std::filesystem::path temporary_path = directory_ / (kek_id + ".kek.tmp");
    {
        File file = File::create_new(temporary_path, 0600);
        file.write_exact(0, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
        file.sync_all();
    }
    Botan::secure_scrub_memory(text.data(), text.size());
    std::filesystem::rename(temporary_path, final_path);
    sync_directory(directory_);
    return kek_id;
}

KeySlot KeyStoreSource::seal(const SecureBytes& dek)
{
    if (!kek_id_) {
        kek_id_ = create_kek();
        created_kek_id_ = kek_id_;
    }
    const std::string& kek_id = *kek_id_;  // a second seal() on this source reuses the KEK

    KeySlot slot;
    slot.type = slot_type();
    slot.params["kek"] = kek_id;
    slot.wrapped_dek = wrap_key(load_kek(kek_id), dek);
    return slot;
}

void KeyStoreSource::discard_sealed() noexcept
{
    if (!created_kek_id_)
        return;
    std::error_code ec;
    std::filesystem::remove(directory_ / (*created_kek_id_ + ".kek"), ec);
    created_kek_id_.reset();
    kek_id_.reset();
}

std::unique_ptr<KeySource> KeyStoreSource::same_kek_sealer(const KeySlot& slot)
{
    return std::make_unique<KeyStoreSource>(directory_, slot.param("kek", "key slot"));
}

SecureBytes KeyStoreSource::unseal(const KeySlot& slot)
{
    const std::string& kek_id = slot.param("kek", "key slot");
    return unwrap_key(load_kek(kek_id), slot.wrapped_dek);
}

}  // namespace vmcrypt
