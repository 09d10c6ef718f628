#include "formats/vmdk/vmx_file.hpp"

#include "core/error.hpp"
#include "core/io/file.hpp"

#include <algorithm>
#include <cctype>
#include <sys/stat.h>

namespace vmcrypt::vmdk {

namespace {

// .vmx and .vmsd files are small; a larger file is not one.
constexpr std::size_t max_config_file_size = 4 << 20;

std::string lower(std::string text)
{
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

struct ConfigLine {
    std::string text;     // without the line ending
    std::string ending;   // "\n", "\r\n" or ""
    std::string key;      // empty for blank lines and comments
    std::size_t value_start = 0;
    std::size_t value_length = 0;
};

std::vector<ConfigLine> split_config(const std::string& contents)
{
    std::vector<ConfigLine> lines;
    std::size_t pos = 0;
    while (pos < contents.size()) {
        std::size_t newline = contents.find('\n', pos);
        ConfigLine line;
        std::size_t end = newline == std::string::npos ? contents.size() : newline;
        std::size_t content_end = end;
        if (newline != std::string::npos) {
            line.ending = "\n";
            if (content_end > pos && contents[content_end - 1] == '\r') {
                --content_end;
                line.ending = "\r\n";
            }
        }
        line.text = contents.substr(pos, content_end - pos);
        pos = newline == std::string::npos ? contents.size() : newline + 1;

        std::size_t equals = line.text.find('=');
        std::size_t first = line.text.find_first_not_of(" \t");
        if (equals != std::string::npos && first != std::string::npos && line.text[first] != '#') {
            std::string key = line.text.substr(first, equals - first);
            key.erase(key.find_last_not_of(" \t") + 1);
            std::size_t value = line.text.find_first_not_of(" \t", equals + 1);
            if (value != std::string::npos && line.text[value] == '"') {
                std::size_t close = line.text.find('"', value + 1);
                if (close != std::string::npos) {
                    line.key = key;
                    line.value_start = value + 1;
                    line.value_length = close - value - 1;
                }
            }
        }
        lines.push_back(std::move(line));
    }
    return lines;
}

std::string join_config(const std::vector<ConfigLine>& lines)
{
    std::string contents;
    for (const ConfigLine& line : lines)
        contents += line.text + line.ending;
    return contents;
}

std::string value_of(const ConfigLine& line)
{
    return line.text.substr(line.value_start, line.value_length);
}

bool is_disk_key(const std::string& key)
{
    return lower(key).ends_with(".filename") && !lower(key).starts_with("snapshot");
}

std::filesystem::path folder_of(const std::filesystem::path& path)
{
    std::filesystem::path folder = path.parent_path();
    return folder.empty() ? std::filesystem::path(".") : folder;
}

std::filesystem::path resolve(const std::filesystem::path& vmx, const std::string& value)
{
    std::filesystem::path path(value);
    if (path.is_relative())
        path = folder_of(vmx) / path;
    return path.lexically_normal();
}

std::filesystem::path canonical_or_normal(const std::filesystem::path& path)
{
    std::error_code error;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(path, error);
    return error ? path.lexically_normal() : canonical;
}

}  // namespace

std::vector<VmxDiskReference> find_vmx_disk_references(const std::filesystem::path& folder)
{
    std::vector<VmxDiskReference> references;
    std::error_code error;
    std::filesystem::directory_iterator entry(folder, error);
    std::vector<std::filesystem::path> vmx_files;
    for (; !error && entry != std::filesystem::directory_iterator(); entry.increment(error)) {
        std::error_code type_error;
        if (lower(entry->path().extension().string()) == ".vmx" && entry->is_regular_file(type_error))
            vmx_files.push_back(folder / entry->path().filename());
    }
    std::sort(vmx_files.begin(), vmx_files.end());

    for (const std::filesystem::path& vmx : vmx_files) {
        std::string contents = read_small_file(vmx, max_config_file_size);
        for (const ConfigLine& line : split_config(contents)) {
            if (line.key.empty() || !is_disk_key(line.key))
                continue;
            std::string value = value_of(line);
            if (!lower(value).ends_with(".vmdk"))
                continue;
            references.push_back(VmxDiskReference{vmx, line.key, value, resolve(vmx, value)});
        }
    }
    return references;
}

bool names_disk(const VmxDiskReference& reference, const std::filesystem::path& disk)
{
    std::error_code error;
    if (std::filesystem::exists(reference.resolved, error) && std::filesystem::exists(disk, error))
        return std::filesystem::equivalent(reference.resolved, disk, error);
    return canonical_or_normal(reference.resolved) == canonical_or_normal(disk);
}

bool repoint_vmx_disk(const std::filesystem::path& vmx, const std::filesystem::path& from,
                      const std::filesystem::path& to)
{
    std::string contents = read_small_file(vmx, max_config_file_size);
    std::vector<ConfigLine> lines = split_config(contents);
    bool changed = false;
    for (ConfigLine& line : lines) {
        if (line.key.empty() || !is_disk_key(line.key))
            continue;
        std::string value = value_of(line);
        VmxDiskReference reference{vmx, line.key, value, resolve(vmx, value)};
        if (!names_disk(reference, from))
            continue;

        std::string replacement;
        if (std::filesystem::path(value).is_absolute()) {
            replacement = canonical_or_normal(to).string();
        } else {
            std::filesystem::path relative =
                canonical_or_normal(to).lexically_relative(canonical_or_normal(folder_of(vmx)));
            replacement = relative.empty() ? canonical_or_normal(to).string() : relative.string();
        }
        if (replacement.find('"') != std::string::npos || replacement.find('|') != std::string::npos)
            throw UnsupportedInput(vmx.string() + ": " + line.key + ": the new disk path " + replacement +
                                   " contains '\"' or '|', which would need VMware's escaping; rename the base disk");
        line.text.replace(line.value_start, line.value_length, replacement);
        changed = true;
    }
    if (changed)
        replace_file_atomically(vmx, join_config(lines));
    return changed;
}

std::filesystem::path vmsd_path_of(const std::filesystem::path& vmx)
{
    std::string contents = read_small_file(vmx, max_config_file_size);
    for (const ConfigLine& line : split_config(contents))
        if (lower(line.key) == "snapshot.filename")
            return resolve(vmx, value_of(line));
    std::filesystem::path vmsd = vmx;
    vmsd.replace_extension(".vmsd");
    return vmsd;
}

bool empty_snapshot_list(const std::filesystem::path& vmsd)
{
    std::error_code error;
    if (!std::filesystem::exists(vmsd, error))
        return false;
    std::string contents = read_small_file(vmsd, max_config_file_size);
    std::vector<ConfigLine> lines = split_config(contents);
    std::vector<ConfigLine> kept;
    bool has_count = false;
    for (ConfigLine& line : lines) {
        std::string key = lower(line.key);
        bool snapshot_entry = key.size() > 8 && key.starts_with("snapshot") && std::isdigit(static_cast<unsigned char>(key[8]));
        if (snapshot_entry || key == "snapshot.current" || key.starts_with("snapshot.mru"))
            continue;
        if (key == "snapshot.numsnapshots") {
            line.text.replace(line.value_start, line.value_length, "0");
            has_count = true;
        }
        kept.push_back(line);
    }
    std::string updated = join_config(kept);
    if (!has_count) {
        std::string ending = lines.empty() ? "\n" : lines.front().ending;
        if (ending.empty())
            ending = "\n";
        if (!updated.empty() && updated.back() != '\n')
            updated += ending;
        updated += "snapshot.numSnapshots = \"0\"" + ending;
    }
    if (updated == contents)
        return false;
    replace_file_atomically(vmsd, updated);
    return true;
}

void replace_file_atomically(const std::filesystem::path& path, const std::string& contents)
{
    struct stat status {};
    unsigned mode = ::stat(path.c_str(), &status) == 0 ? (status.st_mode & 07777) : 0644;

    std::filesystem::path temporary = path;
    temporary += ".vmcrypt-tmp";
    std::error_code error;
    std::filesystem::remove(temporary, error);  // left by an interrupted run; never the real file
    {
        File file = File::create_new(temporary, mode);
        file.write_exact(0, {reinterpret_cast<const std::uint8_t*>(contents.data()), contents.size()});
        file.sync_all();
    }
    std::filesystem::rename(temporary, path);
    sync_directory(folder_of(path));
}

}  // namespace vmcrypt::vmdk
