#!/usr/bin/env bash
# Writes to a disk while it is encrypted. QEMU writes a vmcrypt-encrypted qcow2 by design (it opens it
# with the secret), so decrypt must take the image as QEMU left it, including writes to the first units
# of the disk. An encrypted VMDK that some program wrote to is rejected by the data check, and decrypt
# --skip-data-check recovers every unit that was not written.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

head -c 32 /dev/urandom >"$TEST_TMP/disk.key"

# qcow2: a guest writes the ext4 superblock area, the first sector, and space that was never allocated.
image="$TEST_TMP/guest.qcow2"
make_qcow2_ext4 "$image" "$TEST_TMP/guest.raw"
expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/disk.key" "$image"
# The secret goes to a new 0600 file (never onto a command line), which is never overwritten.
expect_exit 0 "$VMCRYPT" qemu-secret -o "$TEST_TMP/secret.txt" --key-file "$TEST_TMP/disk.key" "$image"
[[ -z $LAST_STDOUT ]] || fail "qemu-secret -o printed to stdout: $LAST_STDOUT"
[[ $(stat -c %a "$TEST_TMP/secret.txt") == 600 ]] || fail "the secret file is not mode 0600"
[[ $(wc -c <"$TEST_TMP/secret.txt") == 64 ]] || fail "the secret file is not the 64 secret characters alone"
cp "$TEST_TMP/secret.txt" "$TEST_TMP/secret.copy"
expect_exit 2 "$VMCRYPT" qemu-secret -o "$TEST_TMP/secret.txt" --key-file "$TEST_TMP/disk.key" "$image"
expect_stderr_contains "never overwrites"
cmp -s "$TEST_TMP/secret.txt" "$TEST_TMP/secret.copy" || fail "qemu-secret -o changed an existing file"
expect_exit 2 "$VMCRYPT" qemu-secret --id 1bad --key-file "$TEST_TMP/disk.key" "$image"
expect_stderr_contains "not a QEMU object id"
secret_object="secret,id=sec0,file=$TEST_TMP/secret.txt"
image_opts="driver=qcow2,file.filename=$image,encrypt.key-secret=sec0"
qemu-io --object "$secret_object" --image-opts "$image_opts" \
    -c 'write -P 0x44 1024 512' -c 'write -P 0x45 0 4096' -c 'write -P 0x46 40M 1M' >/dev/null
qemu-img convert --object "$secret_object" --image-opts "$image_opts" -O raw "$TEST_TMP/guest-view.raw"

expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/disk.key" "$image"
qemu-img compare -f qcow2 -F raw "$image" "$TEST_TMP/guest-view.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the decrypted qcow2 differs from what QEMU read before the decrypt: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "qemu-img check of the decrypted qcow2 failed: $(cat "$TEST_TMP/check.out")"

# QEMU left the dirty bit (lazy refcounts) on the encrypted image: decrypt names a qemu-img repair that
# reads the secret from a file, and that repair makes the image decryptable.
image="$TEST_TMP/dirty.qcow2"
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$image" 16M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "$image" >/dev/null
expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/disk.key" "$image"
write_be_integer "$image" 72 8 1
expect_exit 3 "$VMCRYPT" decrypt --key-file "$TEST_TMP/disk.key" "$image"
expect_stderr_contains "qemu-img check -r all --object secret,id=sec0,file=sec.txt --image-opts"
expect_stderr_contains "vmcrypt qemu-secret -o sec.txt"
(cd "$TEST_TMP" && rm -f sec.txt && "$VMCRYPT" qemu-secret -o sec.txt --key-file disk.key "$image" &&
    qemu-img check -r all --object secret,id=sec0,file=sec.txt \
        --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" >/dev/null)
expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/disk.key" "$image"

# VMDK: a stray 4 KiB write into the ciphertext, as a VM started on the encrypted disk by mistake makes.
dir="$TEST_TMP/vmdk"
mkdir "$dir"
disk="$dir/disk.vmdk"
make_random_disk monolithicSparse "$disk" 16M 4M "$TEST_TMP/vmdk.raw"
expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/disk.key" "$disk"
qemu-io -f vmdk -c 'write -P 0x99 0 4096' "$disk" >/dev/null

hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" decrypt --key-file "$TEST_TMP/disk.key" "$disk"
expect_stderr_contains "dataCheck does not match"
expect_stderr_contains "--skip-data-check"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt rejected by the data check"

expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/disk.key" --skip-data-check "$disk"
expect_stderr_contains "decrypting anyway"
export_raw "$disk" "$TEST_TMP/recovered.raw"
cmp -s -i 4096 "$TEST_TMP/recovered.raw" "$TEST_TMP/vmdk.raw" ||
    fail "decrypt --skip-data-check did not recover the units after the 4 KiB that were written"
if cmp -s -n 4096 "$TEST_TMP/recovered.raw" "$TEST_TMP/vmdk.raw"; then
    fail "the 4 KiB written into the ciphertext decrypted to the original data, so the write did not happen"
fi

echo "$TEST_NAME: qcow2 written by QEMU decrypted as QEMU read it; VMDK recovered with --skip-data-check"
