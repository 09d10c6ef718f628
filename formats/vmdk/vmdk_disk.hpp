#pragma once
// A VMDK disk opened for inspection or in-place rewriting.
//
// Supported createTypes: monolithicSparse (descriptor embedded in the sparse extent), monolithicFlat,
// twoGbMaxExtentFlat, twoGbMaxExtentSparse, vmfs and vmfsThin (a descriptor file plus extent files).
// ZERO extents are allowed. Opening parses and validates all metadata and opens every distinct file
// exactly once. Nothing writes to the disk except apply().

#include "core/disk.hpp"
#include "core/io/file.hpp"
#include "formats/vmdk/descriptor.hpp"
#include "formats/vmdk/grain_directory.hpp"
#include "formats/vmdk/sparse_header.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vmcrypt::vmdk {

class VmdkDisk final : public Disk {
public:
    // Opens the disk whose descriptor (a text file or a "KDMV" sparse file with an embedded descriptor)
    // is `file`, opened from `path` with the access the disk needs. Throws InvalidInput or
    // UnsupportedInput naming the file, the line or header field, and what to do.
    static std::unique_ptr<VmdkDisk> open(File file, const std::filesystem::path& path);

    std::string format() const override { return "vmdk"; }
    std::string subformat() const override { return descriptor_.create_type(); }
    std::uint64_t capacity() const override { return capacity_sectors_ * 512; }
    std::vector<File*> files() override;
    std::vector<DataRun> data_runs() const override { return runs_; }
    std::string tweak_rule() const override { return "guest-sector"; }
    std::optional<RecordFields> record() const override { return descriptor_.record(); }
    MetadataWrite record_update(const std::optional<RecordFields>& fields) const override;
    void apply(const MetadataWrite& update) override;
    DiskRelations relations() const override;
    std::optional<std::string> foreign_encryption() const override;
    std::vector<ExtentInfo> extents() const override;

    const Descriptor& descriptor() const { return descriptor_; }

    // One extent line with its open file, for code that reads or writes grains itself.
    struct ExtentFile {
        ExtentLine line;
        File* file = nullptr;           // nullptr for a ZERO extent
        std::uint64_t first_sector = 0; // guest sector where the extent starts
    };
    std::vector<ExtentFile> extent_files();

private:
    std::string descriptor_room_hint(const std::optional<RecordFields>& fields) const;
    // The embedded descriptor's reserved area in files_[0], in bytes.
    struct EmbeddedArea {
        std::uint64_t offset = 0;
        std::uint64_t size = 0;
    };

    struct Extent {
        ExtentLine line;
        std::optional<std::size_t> file_index;  // none for a ZERO extent
        std::uint64_t first_sector = 0;         // guest sector where the extent starts
        std::uint64_t file_size = 0;
        std::uint64_t allocated_bytes = 0;
    };

    VmdkDisk() = default;

    void open_embedded(File file, const std::string& name);
    void open_separate(File file, const std::string& name);
    void open_extent_files(Access access);
    // scan_sparse_extent(), with the way out of shared grains added to its message.
    SparseExtentScan scan_with_hint(const File& file, const SparseHeader& header, std::size_t file_index,
                                    std::uint64_t first_guest_sector, const std::string& file_name) const;
    std::string extent_name(const ExtentLine& line) const;
    std::filesystem::path extent_path(const ExtentLine& line) const;
    std::string read_descriptor_bytes() const;

    std::filesystem::path path_;  // of the descriptor file, as given
    std::string name_;            // path_ as text, for messages
    std::vector<std::unique_ptr<File>> files_;
    Descriptor descriptor_;
    std::optional<EmbeddedArea> embedded_;
    std::vector<Extent> extents_;
    std::vector<DataRun> runs_;
    std::uint64_t capacity_sectors_ = 0;
};

// Largest separate descriptor file vmcrypt reads or writes, in bytes (1 MiB, qemu's limit too).
inline constexpr std::uint64_t max_descriptor_file_size = 1 << 20;

}  // namespace vmcrypt::vmdk

namespace vmcrypt {

// Opens a VMDK disk whose descriptor file is `path`; see vmdk::VmdkDisk::open().
std::unique_ptr<Disk> open_vmdk(const std::filesystem::path& path, Access access);

}  // namespace vmcrypt
