#pragma once
// The qcow2 part of `vmcrypt inspect`: header facts, allocation, snapshots, backing and encryption.

#include "formats/qcow2/qcow2_disk.hpp"

#include <nlohmann/json.hpp>

namespace vmcrypt::qcow2 {

// Describes the image as the "qcow2" object of the vmcrypt-inspect/1 JSON schema (see vmcrypt-inspect(1)).
// `disk_path` is the path as the user gave it, for the commands the report recommends.
nlohmann::json describe_image(const QcowDisk& disk, const std::string& disk_path);

}  // namespace vmcrypt::qcow2
