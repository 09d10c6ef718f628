#!/usr/bin/env bash
# Decrypt of a qcow2 image that QEMU encrypted with LUKS and a passphrase: without the passphrase or
# with a wrong one nothing is written (exit 4); with it, the image becomes a plain qcow2 with the
# same guest data, also when the decrypt is killed half way and resumed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

dir="$TEST_TMP/luks"
mkdir "$dir"
image="$dir/disk.qcow2"
printf '%s' PASS >"$TEST_TMP/passphrase"
printf '%s' WRONG >"$TEST_TMP/wrong"
secret_opts="driver=qcow2,file.filename=$image,encrypt.key-secret=sec0"

qemu_img_retrying create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 "$image" 64M
qemu-io --object "$QEMU_SECRET_OBJECT" --image-opts "$secret_opts" -c 'write -P 0x5a 0 3M' \
    -c 'write -P 0xa5 20M 2M' -c 'write -z 30M 1M' -c 'write -P 0x3c 67108352 512' >/dev/null
qemu-img convert --object "$QEMU_SECRET_OBJECT" --image-opts "$secret_opts" -O raw "$dir/plain.raw"
cp "$image" "$dir/original.qcow2"

hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 4 "$VMCRYPT" decrypt "$image"
expect_stderr_contains "--passphrase-file"
expect_exit 4 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/wrong" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt without the right passphrase"

# Killed half way: the image is guarded, inspect reports the unfinished decrypt, the same command resumes.
code=0
{ VMCRYPT_FAULT=window-journaled:2:kill "$VMCRYPT" decrypt --window-size 1 --passphrase-file "$TEST_TMP/passphrase" \
    "$image" >/dev/null 2>&1; } 2>/dev/null || code=$?
[[ $code == 137 ]] || fail "expected decrypt to be killed at window-journaled:2, got exit code $code"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt-in-progress ]] ||
    fail "expected inspect to report vmcrypt-in-progress after the kill"
if qemu-img info "$image" >"$TEST_TMP/info.out" 2>&1; then
    fail "expected qemu-img info to reject the half-decrypted image, got: $(cat "$TEST_TMP/info.out")"
fi
grep -q "Unsupported encryption method" "$TEST_TMP/info.out" ||
    fail "expected QEMU to report the guard's unknown encryption method, got: $(cat "$TEST_TMP/info.out")"
# Without the passphrase the resume names the option to add, and does not blame the journal.
expect_exit 4 "$VMCRYPT" decrypt "$image"
expect_stderr_contains "give the passphrase with --passphrase-file FILE"
if grep -qF "journal is damaged" "$TEST_TMP/last.stderr"; then
    fail "a resume without the passphrase blames the journal: $LAST_STDERR"
fi
expect_exit 0 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/passphrase" "$image"

qemu-img compare -f qcow2 -F raw "$image" "$dir/plain.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the decrypted image differs from QEMU's view of the encrypted one: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "qemu-img check of the decrypted image failed: $(cat "$TEST_TMP/check.out")"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == none ]] || fail "expected no encryption after decrypt"

# The plain image encrypts with vmcrypt keys and decrypts again.
expect_exit 0 "$VMCRYPT" encrypt "$image"
expect_exit 0 "$VMCRYPT" decrypt "$image"
qemu-img compare -f qcow2 -F raw "$image" "$dir/plain.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the image differs after a vmcrypt encrypt and decrypt: $(cat "$TEST_TMP/compare.out")"

# A QEMU LUKS image with 512-byte clusters: the record of the decrypt goes into sectors 2 to 7 of
# QEMU's LUKS area, which QEMU leaves free; a kill and resume still give the same guest data.
image="$dir/disk-512.qcow2"
secret_opts="driver=qcow2,file.filename=$image,encrypt.key-secret=sec0"
qemu_img_retrying create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o cluster_size=512,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 "$image" 16M
qemu-io --object "$QEMU_SECRET_OBJECT" --image-opts "$secret_opts" -c 'write -P 0x5a 0 3M' \
    -c 'write -P 0x3c 16776704 512' >/dev/null
qemu-img convert --object "$QEMU_SECRET_OBJECT" --image-opts "$secret_opts" -O raw "$dir/plain-512.raw"
code=0
{ VMCRYPT_FAULT=window-synced:1:kill "$VMCRYPT" decrypt --window-size 1 --passphrase-file "$TEST_TMP/passphrase" \
    "$image" >/dev/null 2>&1; } 2>/dev/null || code=$?
[[ $code == 137 ]] || fail "expected the decrypt of the 512-byte-cluster image to be killed, got exit code $code"
expect_exit 0 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/passphrase" "$image"
qemu-img compare -f qcow2 -F raw "$image" "$dir/plain-512.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the decrypted 512-byte-cluster image differs: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "qemu-img check of the decrypted 512-byte-cluster image failed: $(cat "$TEST_TMP/check.out")"
