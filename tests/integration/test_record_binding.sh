#!/usr/bin/env bash
# An encryption record copied onto another disk (a descriptor copied between cloned VMs) must be rejected
# by decrypt before any write, because its data check does not match that disk's data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$TEST_TMP"
mkdir a b
make_random_disk monolithicFlat a/disk.vmdk 16M 8M original.raw
qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat original.raw b/disk.vmdk

"$VMCRYPT" encrypt --quiet a/disk.vmdk
# qemu-img pads descriptors with NUL bytes; copy the record lines into b's text before the padding.
{ tr -d '\0' < b/disk.vmdk; tr -d '\0' < a/disk.vmdk | grep '^ddb\.vmcrypt\.'; } > b/descriptor.new
mv b/descriptor.new b/disk.vmdk

hash_disk_files b > "$TEST_TMP/hashes.before"
expect_exit 3 "$VMCRYPT" decrypt b/disk.vmdk
expect_stderr_contains "dataCheck"
expect_contents_unchanged b "$TEST_TMP/hashes.before" "decrypt with a record copied from another disk"

# The disk the record belongs to still decrypts.
"$VMCRYPT" decrypt --quiet a/disk.vmdk
expect_same_as_raw a/disk.vmdk original.raw "after decrypting the disk the record belongs to"
