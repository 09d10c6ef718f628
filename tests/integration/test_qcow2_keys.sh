#!/usr/bin/env bash
# Shallow rekey and key slots of a qcow2 image that vmcrypt encrypted. A rekey to a new key file or to
# a passphrase changes only the header cluster, and the old key is rejected with exit 4. keys add, list
# and remove work. The DEK does not change, so the LUKS secret for QEMU stays the same and QEMU reads
# the same guest data with it throughout. Decrypt with the last key returns the original data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

NEW_FAST_KDF=(--new-pbkdf-memory 8192 --new-pbkdf-iterations 1)
head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"
head -c 32 /dev/urandom >"$TEST_TMP/c.key"
printf 'qcow2 rekey passphrase\n' >"$TEST_TMP/pass.txt"

dir="$TEST_TMP/disk"
image="$dir/disk.qcow2"
raw="$TEST_TMP/plain.raw"
mkdir "$dir"
qemu-img create -q -f qcow2 "$image" 64M
qemu-io -f qcow2 -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 20M 2M' -c 'write -z 30M 1M' \
    -c 'write -P 0x3c 67108352 512' "$image" >/dev/null
qemu-img convert -f qcow2 -O raw "$image" "$raw"

# Fails unless QEMU, given SECRET (a --object argument), reads the raw guest data from the image.
expect_qemu_reads_with() {
    local secret=$1 context=$2 code=0
    qemu-img compare --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        "driver=raw,file.filename=$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img compare with the secret exited $code: $(cat "$TEST_TMP/compare.out")"
    qemu-img check --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img check with the secret exited $code: $(cat "$TEST_TMP/check.out")"
}

# Fails unless the image differs from the copy BEFORE only in its first cluster, which contains the
# header and the vmcrypt extension. A shallow rekey or a slot change must not touch data, tables or the
# LUKS area.
expect_only_header_changed() {
    "$PYTHON" - "$image" "$1" <<'PY' || fail "$2 changed bytes of the image outside its header cluster"
import struct, sys
a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
if len(a) != len(b):
    sys.exit(f"size changed from {len(b)} to {len(a)}")
cluster = 1 << struct.unpack_from(">I", a, 20)[0]
if a[cluster:] != b[cluster:]:
    sys.exit("bytes after the first cluster differ")
if a[:cluster] == b[:cluster]:
    sys.exit("the header cluster did not change either")
PY
}

expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$image"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image"
secret=$LAST_STDOUT
expect_qemu_reads_with "$secret" "after encrypt"

# Rekey to a new key file. Only the header changes, the secret for QEMU stays, the old key is rejected.
cp "$image" "$TEST_TMP/before.qcow2"
expect_exit 0 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$image"
[[ ! -e $image.vmcrypt-journal ]] || fail "the rekey left its journal behind"
expect_only_header_changed "$TEST_TMP/before.qcow2" "a rekey to a new key file"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/b.key" "$image"
[[ $LAST_STDOUT == "$secret" ]] || fail "the QEMU secret changed with a shallow rekey, although the DEK did not"
expect_qemu_reads_with "$secret" "after a rekey to a new key file"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$image"
expect_exit 4 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image"
expect_exit 4 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/c.key" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "commands with the replaced key"

# A rekey to the key in use changes nothing.
expect_exit 3 "$VMCRYPT" rekey --key-file "$TEST_TMP/b.key" --new-key-file "$TEST_TMP/b.key" "$image"
expect_stderr_contains "would change nothing"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "a rekey to the key in use"

# Rekey to a passphrase.
cp "$image" "$TEST_TMP/before.qcow2"
expect_exit 0 "$VMCRYPT" rekey --key-file "$TEST_TMP/b.key" --new-passphrase-file "$TEST_TMP/pass.txt" \
    "${NEW_FAST_KDF[@]}" "$image"
expect_only_header_changed "$TEST_TMP/before.qcow2" "a rekey to a passphrase"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$image"
expect_exit 0 "$VMCRYPT" qemu-secret --passphrase-file "$TEST_TMP/pass.txt" "$image"
[[ $LAST_STDOUT == "$secret" ]] || fail "the QEMU secret changed with a rekey to a passphrase"
expect_qemu_reads_with "$secret" "after a rekey to a passphrase"

# keys add puts a key file slot next to the passphrase slot, keys list shows both, and each opens the image.
cp "$image" "$TEST_TMP/before.qcow2"
expect_exit 0 "$VMCRYPT" keys add --passphrase-file "$TEST_TMP/pass.txt" --new-key-file "$TEST_TMP/c.key" "$image"
expect_only_header_changed "$TEST_TMP/before.qcow2" "keys add"
expect_exit 0 "$VMCRYPT" keys list "$image"
[[ $(grep -c '^slot ' <<<"$LAST_STDOUT") == 2 ]] || fail "expected two slots after keys add, got: $LAST_STDOUT"
grep -q '^slot [0-9]*: passphrase' <<<"$LAST_STDOUT" || fail "keys list shows no passphrase slot: $LAST_STDOUT"
grep -q '^slot [0-9]*: key-file kek=' <<<"$LAST_STDOUT" || fail "keys list shows no key-file slot: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" --json keys list "$image"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/c.key" "$image"
[[ $LAST_STDOUT == "$secret" ]] || fail "the QEMU secret from the added slot differs"
# Adding a KEK that already has a slot is rejected.
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" keys add --key-file "$TEST_TMP/c.key" --new-key-file "$TEST_TMP/c.key" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "keys add of a KEK that has a slot"

# keys remove drops the passphrase slot, with the key file as the current key. The last slot stays.
expect_exit 0 "$VMCRYPT" keys list "$image"
passphrase_slot=$(grep '^slot [0-9]*: passphrase' <<<"$LAST_STDOUT" | sed -e 's/^slot \([0-9]*\):.*/\1/')
expect_exit 0 "$VMCRYPT" keys remove --key-file "$TEST_TMP/c.key" --slot "$passphrase_slot" "$image"
expect_exit 0 "$VMCRYPT" keys list "$image"
[[ $(grep -c '^slot ' <<<"$LAST_STDOUT") == 1 ]] || fail "expected one slot after keys remove, got: $LAST_STDOUT"
last_slot=$(sed -e 's/^slot \([0-9]*\):.*/\1/' <<<"$LAST_STDOUT")
expect_exit 4 "$VMCRYPT" qemu-secret --passphrase-file "$TEST_TMP/pass.txt" "$image"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" keys remove --key-file "$TEST_TMP/c.key" --slot "$last_slot" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "removing the last slot"
expect_qemu_reads_with "$secret" "after keys add and remove"

# A slot changed by hand in the vmcrypt extension (its creation time) is detected by the record MAC.
cp "$image" "$TEST_TMP/tampered.qcow2"
"$PYTHON" - "$TEST_TMP/tampered.qcow2" <<'PY' || fail "test setup: no key slot creation time found in the vmcrypt extension"
import re, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read(65536))
match = re.search(rb";created=(\d{4})-", bytes(data))
if not match:
    sys.exit(1)
data[match.start(1):match.end(1)] = b"1999"
with open(path, "r+b") as image:
    image.write(data)
PY
expect_exit 3 "$VMCRYPT" decrypt --key-file "$TEST_TMP/c.key" "$TEST_TMP/tampered.qcow2"
expect_stderr_contains "mac"
rm -f "$TEST_TMP/tampered.qcow2"

expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/c.key" "$image"
qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the decrypted image differs from the original: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "qemu-img check of the decrypted image failed: $(cat "$TEST_TMP/check.out")"
echo "$TEST_NAME: rekeyed, slots added and removed, decrypted with the last key"
