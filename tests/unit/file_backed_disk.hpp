#pragma once
// A minimal Disk over real files for engine tests: a data file whose runs are given explicitly, and a
// separate metadata file holding the record as "key=value" lines. It exercises the engine and journal
// without any VMDK parsing.

#include "core/disk.hpp"
#include "core/io/file.hpp"
#include "core/record/encryption_record.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace vmcrypt::test_support {

class FileBackedDisk : public Disk {
public:
    FileBackedDisk(const std::filesystem::path& metadata, const std::filesystem::path& data, std::vector<DataRun> runs)
        : metadata_(File::open(metadata, Access::read_write)), data_(File::open(data, Access::read_write)),
          runs_(std::move(runs))
    {
    }

    std::string format() const override { return "test"; }
    std::string subformat() const override { return "file-backed"; }
    std::uint64_t capacity() const override { return data_.size(); }
    std::vector<File*> files() override { return {&metadata_, &data_}; }
    std::vector<DataRun> data_runs() const override { return runs_; }
    std::string tweak_rule() const override { return "guest-sector"; }

    std::optional<RecordFields> record() const override
    {
        std::string text(metadata_.size(), '\0');
        metadata_.read_at(0, {reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
        if (text.empty())
            return std::nullopt;
        return fields_from_text(text);
    }

    MetadataWrite record_update(const std::optional<RecordFields>& fields) const override
    {
        std::string text = fields ? fields_to_text(*fields) : std::string();
        MetadataWrite update;
        update.file_index = 0;
        update.bytes.assign(text.begin(), text.end());
        update.truncate_to = text.size();
        return update;
    }

    void apply(const MetadataWrite& update) override
    {
        metadata_.write_exact(update.offset, update.bytes);
        if (update.truncate_to)
            metadata_.truncate(*update.truncate_to);
        metadata_.sync_data();
    }

    DiskRelations relations() const override { return {}; }
    std::optional<std::string> foreign_encryption() const override { return std::nullopt; }
    std::vector<ExtentInfo> extents() const override { return {}; }

private:
    mutable File metadata_;
    File data_;
    std::vector<DataRun> runs_;
};

}  // namespace vmcrypt::test_support
