#!/usr/bin/env bash
# Crash safety of qcow2 encrypt and decrypt: vmcrypt is killed with SIGKILL at named fault points
# (VMCRYPT_FAULT=point:count:kill) during leak repair, decompression, refcount growth, the LUKS area
# allocation and every step of the rewrite engine, also with 512-byte clusters. After each kill the
# image must be free of errors for qemu-img check (leaks are allowed until the run is resumed), and
# re-running the command must finish it: QEMU then reads the original guest data and check finds no
# leaks either.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

VMCRYPT_IN_PROGRESS=$((0x766d6370))
KILLS=0

dir="$TEST_TMP/images"
mkdir "$dir"
raw="$dir/plain.raw"
# 1 KiB clusters with 64-bit refcounts: a refcount block covers only 128 clusters, so the LUKS area and
# the decompressed clusters need new refcount blocks and a larger refcount table.
truncate -s 32M "$raw"
head -c 12M /dev/urandom | dd of="$raw" conv=notrunc status=none
qemu-io -f raw -c 'write -P 0x61 14M 6M' -c 'write -P 0x62 31M 512k' "$raw" >/dev/null
qemu-img convert -c -f raw -O qcow2 -o cluster_size=1024,refcount_bits=64 "$raw" "$dir/base.qcow2"

crypt_method() {
    "$PYTHON" -c 'import sys; f = open(sys.argv[1], "rb"); f.seek(32); print(int.from_bytes(f.read(4), "big"))' "$1"
}

# Fails unless qemu-img check finds IMAGE free of errors; leaked clusters are allowed when LEAKS is
# "leaks-allowed". While vmcrypt's guard is set, QEMU rejects the image, so a copy with crypt method 2
# is checked with the secret instead.
expect_structure_clean() {
    local image=$1 leaks=$2 context=$3 code=0
    local method
    method=$(crypt_method "$image")
    if [[ $method == "$VMCRYPT_IN_PROGRESS" || $method == 2 ]]; then
        local secret
        secret=$("$VMCRYPT" qemu-secret "$image")
        cp "$image" "$TEST_TMP/check.qcow2"
        write_be_integer "$TEST_TMP/check.qcow2" 32 4 2
        qemu-img check --object "$secret" --image-opts \
            "driver=qcow2,file.filename=$TEST_TMP/check.qcow2,encrypt.key-secret=sec0" >"$TEST_TMP/check.out" 2>&1 || code=$?
        rm -f "$TEST_TMP/check.qcow2"
    else
        qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 || code=$?
    fi
    if [[ $code == 0 || ($code == 3 && $leaks == leaks-allowed) ]]; then
        return 0
    fi
    fail "$context: qemu-img check exited $code: $(cat "$TEST_TMP/check.out")"
}

# Fails unless QEMU reads the encrypted IMAGE (with its secret) as the raw original.
expect_encrypted_identical() {
    local image=$1 context=$2 secret code=0
    secret=$("$VMCRYPT" qemu-secret "$image")
    qemu-img compare --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        "driver=raw,file.filename=$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img compare with the secret exited $code: $(cat "$TEST_TMP/compare.out")"
}

# Runs OPERATION on IMAGE with the fault point armed and fails unless vmcrypt was killed there.
kill_at() {
    local operation=$1 image=$2 point=$3 code=0
    # The braces take bash's "Killed" report off the test log.
    { VMCRYPT_FAULT="$point:kill" "$VMCRYPT" "$operation" --window-size 1 "$image" >"$TEST_TMP/killed.out" 2>&1; } \
        2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$operation at $point: expected a kill (exit 137), got $code: $(cat "$TEST_TMP/killed.out")"
    KILLS=$((KILLS + 1))
}

encrypt_points=(
    qcow2-clusters-allocated:1
    qcow2-decompressed-written:1
    qcow2-decompressed-linking:1
    qcow2-decompressed-linked:1
    qcow2-decompressed-released:1
    qcow2-refblock-written:1
    qcow2-reftable-entry-written:1
    qcow2-reftable-blocks-written:1
    qcow2-reftable-written:1
    qcow2-reftable-switched:1
    qcow2-luks-area-allocated:1
    qcow2-luks-area-written:1
    before-journal-create:1
    journal-created:1
    start-metadata-written:1
    window-journaled:1
    window-half-written:2
    window-synced:3
    finalize-journaled:1
    final-metadata-written:1
)
for point in "${encrypt_points[@]}"; do
    image="$dir/encrypt.qcow2"
    cp "$dir/base.qcow2" "$image"
    kill_at encrypt "$image" "$point"
    expect_structure_clean "$image" leaks-allowed "encrypt killed at $point"
    expect_exit 0 "$VMCRYPT" encrypt "$image"
    expect_structure_clean "$image" no-leaks "encrypt resumed after a kill at $point"
    expect_encrypted_identical "$image" "encrypt resumed after a kill at $point"
done

# A kill while leaks from an earlier kill are repaired, then a normal resume.
image="$dir/encrypt.qcow2"
cp "$dir/base.qcow2" "$image"
kill_at encrypt "$image" qcow2-luks-area-written:1
kill_at encrypt "$image" qcow2-leaks-repaired:1
expect_structure_clean "$image" leaks-allowed "encrypt killed during leak repair"
expect_exit 0 "$VMCRYPT" encrypt "$image"
expect_structure_clean "$image" no-leaks "encrypt resumed after a kill during leak repair"
expect_encrypted_identical "$image" "encrypt resumed after a kill during leak repair"
cp "$image" "$dir/encrypted.qcow2"

decrypt_points=(
    journal-created:1
    start-metadata-written:1
    window-journaled:2
    window-half-written:1
    window-synced:2
    finalize-journaled:1
    qcow2-luks-area-released:1
    final-metadata-written:1
)
for point in "${decrypt_points[@]}"; do
    image="$dir/decrypt.qcow2"
    cp "$dir/encrypted.qcow2" "$image"
    kill_at decrypt "$image" "$point"
    if [[ $point != qcow2-luks-area-released:1 ]]; then
        expect_structure_clean "$image" leaks-allowed "decrypt killed at $point"
    fi
    # After qcow2-luks-area-released the guarded header still names the released LUKS area until the
    # journaled final header write is redone; QEMU cannot open the image meanwhile.
    expect_exit 0 "$VMCRYPT" decrypt "$image"
    expect_structure_clean "$image" no-leaks "decrypt resumed after a kill at $point"
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "decrypt resumed after a kill at $point: the image differs from the original: $(cat "$TEST_TMP/compare.out")"
done

# 512-byte clusters: the record is in the LUKS area, so each record write is a header write and then a
# record write. After a kill between the two (qcow2-record-header-written) the header may name record
# sectors that are still empty until the resume replays the journaled record, so vmcrypt (and with it
# the secret for the check) cannot open the image meanwhile.
qemu-img convert -f raw -O qcow2 -o cluster_size=512 "$raw" "$dir/base-512.qcow2"
encrypt_512_points=(start-metadata-written:1 qcow2-record-header-written:1 window-journaled:2 finalize-journaled:1
    qcow2-record-header-written:2 final-metadata-written:1)
for point in "${encrypt_512_points[@]}"; do
    image="$dir/encrypt-512.qcow2"
    cp "$dir/base-512.qcow2" "$image"
    kill_at encrypt "$image" "$point"
    if [[ $point != qcow2-record-header-written:1 ]]; then
        expect_structure_clean "$image" leaks-allowed "512-byte clusters: encrypt killed at $point"
    fi
    expect_exit 0 "$VMCRYPT" encrypt "$image"
    expect_structure_clean "$image" no-leaks "512-byte clusters: encrypt resumed after a kill at $point"
    expect_encrypted_identical "$image" "512-byte clusters: encrypt resumed after a kill at $point"
done
cp "$image" "$dir/encrypted-512.qcow2"
decrypt_512_points=(qcow2-record-header-written:1 start-metadata-written:1 window-synced:2 qcow2-luks-area-released:1
    final-metadata-written:1)
for point in "${decrypt_512_points[@]}"; do
    image="$dir/decrypt-512.qcow2"
    cp "$dir/encrypted-512.qcow2" "$image"
    kill_at decrypt "$image" "$point"
    if [[ $point != qcow2-luks-area-released:1 ]]; then
        expect_structure_clean "$image" leaks-allowed "512-byte clusters: decrypt killed at $point"
    fi
    expect_exit 0 "$VMCRYPT" decrypt "$image"
    expect_structure_clean "$image" no-leaks "512-byte clusters: decrypt resumed after a kill at $point"
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "512-byte clusters: decrypt resumed after a kill at $point: the image differs: $(cat "$TEST_TMP/compare.out")"
done

((KILLS >= 20)) || fail "expected at least 20 kills, got $KILLS"
echo "$KILLS kills at named fault points, each resumed to an identical image" >&2
