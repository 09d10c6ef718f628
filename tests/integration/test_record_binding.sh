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

# Clones whose first MiB of data is all zero: the check must still look further into the data.
mkdir c d
for clone in c d; do
    qemu-img create -q -f vmdk -o subformat=monolithicFlat "$clone/disk.vmdk" 16M
    qemu-io -f vmdk -c 'write -P 0 0 1M' -c 'write -P 0x77 2M 1M' "$clone/disk.vmdk" >/dev/null
done
"$VMCRYPT" encrypt --quiet c/disk.vmdk
{ tr -d '\0' < d/disk.vmdk; tr -d '\0' < c/disk.vmdk | grep '^ddb\.vmcrypt\.'; } > d/descriptor.new
mv d/descriptor.new d/disk.vmdk
hash_disk_files d > "$TEST_TMP/hashes.before"
expect_exit 3 "$VMCRYPT" decrypt d/disk.vmdk
expect_stderr_contains "dataCheck"
expect_contents_unchanged d "$TEST_TMP/hashes.before" "decrypt of a clone whose first MiB is zero"
