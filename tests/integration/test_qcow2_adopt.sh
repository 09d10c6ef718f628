#!/usr/bin/env bash
# Adoption of a qcow2 that QEMU encrypted with LUKS and a passphrase: `vmcrypt keys add` with that
# passphrase gives it vmcrypt key slots without rewriting its data. The LUKS master key becomes the DEK.
# QEMU then still opens the image with the original passphrase, and also with the secret that
# `vmcrypt qemu-secret` prints. After a deep rekey only the new secret opens it. Decrypt with the
# vmcrypt key alone returns the original guest data.
# Before that: the refusals (no or a wrong passphrase, commands other than keys add), SIGKILL at each
# fault point of the adoption and every torn version of its header write. After each crash the same
# command finishes the adoption, and until then QEMU still opens the image with the passphrase.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

dir="$TEST_TMP/luks"
mkdir "$dir"
image="$dir/disk.qcow2"
raw="$TEST_TMP/plain.raw"
printf '%s' PASS >"$TEST_TMP/passphrase"
printf '%s' WRONG >"$TEST_TMP/wrong"
printf 'recovery passphrase\n' >"$TEST_TMP/recovery"
head -c 32 /dev/urandom >"$TEST_TMP/kek.bin"
ADOPT=(keys add --passphrase-file "$TEST_TMP/passphrase" --new-key-file "$TEST_TMP/kek.bin")

# The guest data: an ext4 file system and qemu-io patterns, converted by qemu-img into a LUKS qcow2.
build="$TEST_TMP/build"
make_marker_tree "$build/tree"
truncate -s 64M "$raw"
mkfs.ext4 -q -F -d "$build/tree" "$raw" "$EXT4_FS_SIZE"
qemu-io -f raw -c 'write -P 0x5a 40M 1M' -c 'write -P 0xa5 67108352 512' "$raw" >/dev/null
qemu_img_retrying convert -f raw -O qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 "$raw" "$image"
grep -qF "$PLAINTEXT_MARKER" "$image" && fail "test setup: the plaintext marker is readable in QEMU's LUKS image"
cp "$image" "$TEST_TMP/original.qcow2"

# Fails unless QEMU opens the image with the --object SECRET, reads the raw guest data from it and
# finds no errors.
expect_qemu_reads_with() {
    local secret=$1 context=$2 code=0
    qemu-img compare --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        "driver=raw,file.filename=$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img compare with the secret exited $code: $(cat "$TEST_TMP/compare.out")"
    qemu-img check --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img check with the secret exited $code: $(cat "$TEST_TMP/check.out")"
}

# Fails unless the image differs from the original only in cluster 0 (the header with the vmcrypt
# extension) and in the LUKS area (one more key slot): adoption rewrites no data.
expect_data_untouched() {
    "$PYTHON" - "$image" "$TEST_TMP/original.qcow2" <<'PY' || fail "$1: bytes outside the header and the LUKS area changed"
import struct, sys
new, old = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
if len(new) != len(old):
    sys.exit(f"size changed from {len(old)} to {len(new)}")
cluster = 1 << struct.unpack_from(">I", old, 20)[0]
end_of_extensions = cluster
offset = struct.unpack_from(">I", old, 100)[0]
area = None
while offset + 8 <= cluster:
    kind, length = struct.unpack_from(">II", old, offset)
    if kind == 0:
        break
    if kind == 0x0537be77:
        area = struct.unpack_from(">QQ", old, offset + 8)
    offset += 8 + (length + 7) // 8 * 8
if area is None:
    sys.exit("no crypto header extension in the original")
start, length = area
if new[cluster:start] != old[cluster:start] or new[start + length:] != old[start + length:]:
    sys.exit("data or tables changed")
PY
}

hash_disk_files "$dir" >"$TEST_TMP/hashes.original"
expect_exit 4 "$VMCRYPT" keys add --new-key-file "$TEST_TMP/kek.bin" "$image"
expect_stderr_contains "--passphrase-file"
expect_exit 4 "$VMCRYPT" keys add --passphrase-file "$TEST_TMP/wrong" --new-key-file "$TEST_TMP/kek.bin" "$image"
expect_exit 3 "$VMCRYPT" keys remove --passphrase-file "$TEST_TMP/passphrase" --slot 0 "$image"
expect_stderr_contains "vmcrypt keys add --passphrase-file"
expect_exit 3 "$VMCRYPT" rekey --passphrase-file "$TEST_TMP/passphrase" --new-key-file "$TEST_TMP/kek.bin" "$image"
expect_stderr_contains "vmcrypt keys add --passphrase-file"
expect_exit 3 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$image"
expect_stderr_contains "vmcrypt keys add --passphrase-file"
expect_exit 3 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/kek.bin" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.original" "rejected commands on a QEMU LUKS image"

# SIGKILL at each fault point of the adoption: QEMU still opens the image with the passphrase, and the
# same command finishes the adoption.
for point in qcow2-luks-slot-written:1 qcow2-luks-slot-enabled:1 before-journal-create:1 journal-created:1 \
    final-metadata-written:1; do
    cp "$TEST_TMP/original.qcow2" "$image"
    code=0
    { VMCRYPT_FAULT="$point:kill" "$VMCRYPT" "${ADOPT[@]}" "$image" >"$TEST_TMP/killed.out" 2>&1; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "keys add at $point: expected a kill (exit 137), got $code: $(cat "$TEST_TMP/killed.out")"
    expect_qemu_reads_with "$QEMU_SECRET_OBJECT" "adoption killed at $point, with the passphrase"
    expect_exit 0 "$VMCRYPT" "${ADOPT[@]}" "$image"
    [[ ! -e $image.vmcrypt-journal ]] || fail "adoption resumed after a kill at $point: the journal remained"
    expect_exit 0 "$VMCRYPT" keys list "$image"
    [[ $(grep -c '^slot 0: key-file' <<<"$LAST_STDOUT") == 1 && $(grep -c '^slot' <<<"$LAST_STDOUT") == 1 ]] ||
        fail "adoption resumed after a kill at $point: expected one key-file slot, got: $LAST_STDOUT"
    expect_data_untouched "adoption resumed after a kill at $point"
    expect_qemu_reads_with "$QEMU_SECRET_OBJECT" "adoption resumed after a kill at $point, with the passphrase"
done

# Every torn version of the journaled header write (its first N sectors written, the rest old): the
# same command finishes the adoption.
cp "$TEST_TMP/original.qcow2" "$image"
code=0
{ VMCRYPT_FAULT="journal-created:1:kill" "$VMCRYPT" "${ADOPT[@]}" "$image" >/dev/null 2>&1; } 2>/dev/null || code=$?
[[ $code == 137 ]] || fail "keys add at journal-created: expected a kill (exit 137), got $code"
cp "$image" "$TEST_TMP/killed.qcow2"
cp "$image.vmcrypt-journal" "$TEST_TMP/killed.journal"
sectors=$(pending_write "$TEST_TMP/killed.journal")
((sectors >= 2)) || fail "test setup: the journaled header write has $sectors sectors, so no write can be torn"
for torn in $(seq 1 "$sectors"); do
    cp "$TEST_TMP/killed.qcow2" "$image"
    cp "$TEST_TMP/killed.journal" "$image.vmcrypt-journal"
    pending_write "$TEST_TMP/killed.journal" "$image" "$torn"
    expect_exit 0 "$VMCRYPT" "${ADOPT[@]}" "$image"
    [[ ! -e $image.vmcrypt-journal ]] || fail "adoption torn after $torn of $sectors sectors: the journal remained"
    expect_data_untouched "adoption torn after $torn of $sectors sectors"
    expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/kek.bin" "$image"
    expect_qemu_reads_with "$LAST_STDOUT" "adoption torn after $torn of $sectors sectors, with vmcrypt's secret"
done
rm -f "$TEST_TMP/killed.qcow2" "$TEST_TMP/killed.journal"

# An adoption without a kill.
cp "$TEST_TMP/original.qcow2" "$image"
expect_exit 0 "$VMCRYPT" "${ADOPT[@]}" "$image"
expect_data_untouched "adoption"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt ]] ||
    fail "expected inspect to report vmcrypt encryption after the adoption"
# Adopting twice is rejected: the image has vmcrypt slots now, and the LUKS passphrase opens none.
hash_disk_files "$dir" >"$TEST_TMP/hashes.adopted"
expect_exit 4 "$VMCRYPT" "${ADOPT[@]}" "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.adopted" "a second adoption"

# QEMU opens the image with the original passphrase and with vmcrypt's secret; cryptsetup accepts the
# LUKS header with both slots.
expect_qemu_reads_with "$QEMU_SECRET_OBJECT" "after the adoption, with the passphrase"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/kek.bin" "$image"
expect_qemu_reads_with "$LAST_STDOUT" "after the adoption, with vmcrypt's secret"
area_offset=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.offset)
area_length=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.length)
dd if="$image" of="$TEST_TMP/luks.bin" bs=512 skip=$((area_offset / 512)) count=$((area_length / 512)) status=none
cryptsetup luksDump "$TEST_TMP/luks.bin" >"$TEST_TMP/luksdump.out" 2>&1 ||
    fail "cryptsetup luksDump rejected the LUKS area after the adoption: $(cat "$TEST_TMP/luksdump.out")"
[[ $(grep -c 'ENABLED' "$TEST_TMP/luksdump.out") == 2 ]] ||
    fail "expected two enabled LUKS key slots after the adoption: $(cat "$TEST_TMP/luksdump.out")"
cryptsetup open --test-passphrase "$TEST_TMP/luks.bin" --key-file="$TEST_TMP/passphrase" ||
    fail "cryptsetup could not open the LUKS header with the original passphrase after the adoption"

# A second vmcrypt slot through the ordinary keys add, then decrypt with the key file alone.
expect_exit 0 "$VMCRYPT" keys add --key-file "$TEST_TMP/kek.bin" --new-passphrase-file "$TEST_TMP/recovery" \
    --new-pbkdf-memory 8192 --new-pbkdf-iterations 1 "$image"
expect_exit 0 "$VMCRYPT" keys list "$image"
[[ $(grep -c '^slot' <<<"$LAST_STDOUT") == 2 ]] || fail "expected two vmcrypt slots, got: $LAST_STDOUT"
# A deep rekey replaces the LUKS header, as documented: afterwards only vmcrypt's new secret opens the
# image in QEMU, not the LUKS passphrase of the adopted image.
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/kek.bin" --passphrase-file "$TEST_TMP/recovery" "$image"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/kek.bin" "$image"
expect_qemu_reads_with "$LAST_STDOUT" "after a deep rekey of the adopted image, with vmcrypt's new secret"
code=0
qemu-img check --object "$QEMU_SECRET_OBJECT" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    >"$TEST_TMP/check.out" 2>&1 || code=$?
[[ $code != 0 ]] && grep -q "Invalid password" "$TEST_TMP/check.out" ||
    fail "expected QEMU to reject the LUKS passphrase after a deep rekey, got exit $code: $(cat "$TEST_TMP/check.out")"

expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/kek.bin" "$image"
qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "the decrypted image differs from the original guest data: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "qemu-img check of the decrypted image failed (leaks or errors): $(cat "$TEST_TMP/check.out")"
qemu-img convert -f qcow2 -O raw "$image" "$TEST_TMP/decrypted.raw"
e2fsck -fn "$TEST_TMP/decrypted.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
    fail "e2fsck -fn of the decrypted file system failed: $(cat "$TEST_TMP/e2fsck.out")"
echo "$TEST_NAME: adopted (also after 5 kills and torn header writes), opened by QEMU with both secrets, decrypted with the vmcrypt key"

# With 512-byte clusters the vmcrypt record lives in the LUKS area next to the new key slot.
small="$TEST_TMP/small/disk.qcow2"
mkdir "$TEST_TMP/small"
qemu_img_retrying create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o cluster_size=512,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 "$small" 16M
small_opts="driver=qcow2,file.filename=$small,encrypt.key-secret=sec0"
qemu-io --object "$QEMU_SECRET_OBJECT" --image-opts "$small_opts" -c 'write -P 0x3c 1M 3M' >/dev/null
qemu-img convert --object "$QEMU_SECRET_OBJECT" --image-opts "$small_opts" -O raw "$TEST_TMP/small.raw"
expect_exit 0 "$VMCRYPT" "${ADOPT[@]}" "$small"
expect_exit 0 "$VMCRYPT" qemu-secret --key-file "$TEST_TMP/kek.bin" "$small"
for secret in "$QEMU_SECRET_OBJECT" "$LAST_STDOUT"; do
    qemu-img compare --object "$secret" --image-opts "$small_opts" "driver=raw,file.filename=$TEST_TMP/small.raw" \
        >"$TEST_TMP/compare.out" 2>&1 || fail "512-byte clusters: QEMU reads other data after the adoption: $(cat "$TEST_TMP/compare.out")"
done
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/kek.bin" "$small"
qemu-img compare -f qcow2 -F raw "$small" "$TEST_TMP/small.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "512-byte clusters: the decrypted image differs: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$small" >"$TEST_TMP/check.out" 2>&1 ||
    fail "512-byte clusters: qemu-img check of the decrypted image failed: $(cat "$TEST_TMP/check.out")"
echo "$TEST_NAME: 512-byte clusters: adopted and decrypted"
