#!/usr/bin/env bash
# Crash safety of a qcow2 deep rekey. vmcrypt is killed with SIGKILL at named fault points
# (VMCRYPT_FAULT=point:count:kill): while it allocates and writes the LUKS area for the new DEK (with
# refcount growth), at every step of the rewrite engine, and while it releases the old LUKS area. After
# each kill qemu-img check must find no errors (leaks are allowed until the run is resumed), and
# re-running the command must finish the rekey. Then QEMU reads the original guest data with the secret
# of the new DEK and rejects the old secret, check finds no leaks, and no unit decrypts under the old DEK.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

"$PYTHON" -c 'import cryptography' 2>/dev/null ||
    fail "python3 module cryptography is missing (Debian package python3-cryptography); the DEK checks need it"

VMCRYPT_IN_PROGRESS=$((0x766d6370))
KILLS=0
head -c 32 /dev/urandom >"$TEST_TMP/a.key"

dir="$TEST_TMP/images"
mkdir "$dir"
raw="$dir/plain.raw"
# 1 KiB clusters with 64-bit refcounts: a refcount block covers only 128 clusters, and the one-cluster
# refcount table covers 16 MiB. So the new LUKS area (2020 clusters) needs new refcount blocks, and past
# the 14 MiB of the encrypted image a larger refcount table. The 12 MiB of data take 12 windows of 1 MiB.
truncate -s 32M "$raw"
head -c 8M /dev/urandom | dd of="$raw" conv=notrunc status=none
qemu-io -f raw -c 'write -P 0x61 10M 3584k' -c 'write -P 0x62 31M 512k' "$raw" >/dev/null
qemu-img convert -f raw -O qcow2 -o cluster_size=1024,refcount_bits=64 "$raw" "$dir/base.qcow2"
qemu-img map -f qcow2 --output=json "$dir/base.qcow2" >"$dir/map.json"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$dir/base.qcow2"
base_dek=$(qcow2_dek_of "$dir/base.qcow2" "$TEST_TMP/a.key")
base_secret=$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$dir/base.qcow2")

crypt_method() {
    "$PYTHON" -c 'import sys; f = open(sys.argv[1], "rb"); f.seek(32); print(int.from_bytes(f.read(4), "big"))' "$1"
}

# Fails unless qemu-img check finds IMAGE free of errors; leaked clusters are allowed when LEAKS is
# "leaks-allowed". While vmcrypt's guard is set, QEMU rejects the image, so a copy with crypt method 2
# is checked. The LUKS area the header names opens with the secret of the old DEK until the final header
# write, and with that of the new DEK after it, so both are tried.
expect_structure_clean() {
    local image=$1 leaks=$2 context=$3 code=0 secret
    local method
    method=$(crypt_method "$image")
    if [[ $method != "$VMCRYPT_IN_PROGRESS" && $method != 2 ]]; then
        fail "$context: crypt_method is $method, expected LUKS (2) or vmcrypt's guard"
    fi
    cp "$image" "$TEST_TMP/check.qcow2"
    write_be_integer "$TEST_TMP/check.qcow2" 32 4 2
    for secret in "$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image")" "$base_secret"; do
        code=0
        qemu-img check --object "$secret" --image-opts \
            "driver=qcow2,file.filename=$TEST_TMP/check.qcow2,encrypt.key-secret=sec0" >"$TEST_TMP/check.out" 2>&1 || code=$?
        grep -q "Invalid password" "$TEST_TMP/check.out" || break
    done
    rm -f "$TEST_TMP/check.qcow2"
    if [[ $code == 0 || ($code == 3 && $leaks == leaks-allowed) ]]; then
        return 0
    fi
    fail "$context: qemu-img check exited $code: $(cat "$TEST_TMP/check.out")"
}

# Fails unless the finished rekey of IMAGE left a clean image under a new DEK that QEMU reads with the
# new secret only, and that no unit of it decrypts under OLD_DEK.
expect_rekeyed() {
    local image=$1 old_dek=$2 context=$3 secret dek code=0
    [[ ! -e $image.vmcrypt-journal ]] || fail "$context: the journal remained"
    [[ $(crypt_method "$image") == 2 ]] || fail "$context: crypt_method is not LUKS (2)"
    expect_structure_clean "$image" no-leaks "$context"
    secret=$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image")
    qemu-img compare --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        "driver=raw,file.filename=$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$context: qemu-img compare with the new secret exited $code: $(cat "$TEST_TMP/compare.out")"
    code=0
    qemu-img check --object "$base_secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code != 0 ]] && grep -q "Invalid password" "$TEST_TMP/check.out" ||
        fail "$context: expected QEMU to reject the old secret, got exit $code: $(cat "$TEST_TMP/check.out")"
    dek=$(qcow2_dek_of "$image" "$TEST_TMP/a.key")
    [[ $dek != "$old_dek" ]] || fail "$context: the DEK did not change"
    check_qcow2_units "$image" "$dir/map.json" "$raw" "$dek" "$old_dek" "$context"
}

# Runs a deep rekey of IMAGE with the fault point armed and fails unless vmcrypt was killed there.
kill_at() {
    local image=$1 point=$2 code=0
    # The braces take bash's "Killed" report off the test log.
    { VMCRYPT_FAULT="$point:kill" "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" --window-size 1 "$image" \
        >"$TEST_TMP/killed.out" 2>&1; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "rekey --deep at $point: expected a kill (exit 137), got $code: $(cat "$TEST_TMP/killed.out")"
    KILLS=$((KILLS + 1))
}

points=(
    qcow2-clusters-allocated:1
    qcow2-refblock-written:1
    qcow2-reftable-entry-written:1
    qcow2-reftable-blocks-written:1
    qcow2-reftable-written:1
    qcow2-reftable-switched:1
    qcow2-luks-area-allocated:1
    qcow2-luks-area-written:1
    before-journal-create:1
    journal-created:1
    journal-body-written:2
    start-metadata-written:1
    window-journaled:1
    window-journaled:5
    window-half-written:2
    window-half-written:11
    window-synced:3
    window-synced:12
    finalize-journaled:1
    qcow2-luks-area-released:1
    final-metadata-written:1
)
for point in "${points[@]}"; do
    image="$dir/rekey.qcow2"
    cp "$dir/base.qcow2" "$image"
    kill_at "$image" "$point"
    if [[ $point != qcow2-luks-area-released:1 ]]; then
        expect_structure_clean "$image" leaks-allowed "rekey killed at $point"
    fi
    # After qcow2-luks-area-released the guarded header still names the released old LUKS area until the
    # journaled final header write is redone; QEMU cannot open the image meanwhile.
    if [[ $point == window-synced:3 ]]; then
        # Half way: QEMU rejects the guarded image, and the other commands name the resume command.
        qemu-img info "$image" >"$TEST_TMP/info.out" 2>&1 &&
            fail "expected qemu-img info to reject the half-rekeyed image, got: $(cat "$TEST_TMP/info.out")"
        grep -q "Unsupported encryption method" "$TEST_TMP/info.out" ||
            fail "expected QEMU to report the guard's unknown encryption method, got: $(cat "$TEST_TMP/info.out")"
        expect_exit 7 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$image"
        expect_stderr_contains "vmcrypt rekey --deep"
        expect_exit 0 "$VMCRYPT" inspect --json "$image"
        echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
        [[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt-in-progress ]] ||
            fail "expected inspect to report vmcrypt-in-progress half way through a deep rekey"
        [[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) == *0x766d636e* ]] ||
            fail "expected the header to name the next LUKS area half way through a deep rekey"
    fi
    expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" --window-size 1 "$image"
    expect_rekeyed "$image" "$base_dek" "rekey resumed after a kill at $point"
done

# A kill while the leaks of an earlier kill are repaired, then a normal run.
image="$dir/rekey.qcow2"
cp "$dir/base.qcow2" "$image"
kill_at "$image" qcow2-luks-area-written:1
kill_at "$image" qcow2-leaks-repaired:1
expect_structure_clean "$image" leaks-allowed "rekey killed during leak repair"
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" "$image"
expect_rekeyed "$image" "$base_dek" "rekey after a kill during leak repair"

# Killed before the journal exists, then decrypted instead: the new area only leaks.
cp "$dir/base.qcow2" "$image"
kill_at "$image" before-journal-create:1
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$image"
code=0
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 || code=$?
[[ $code == 0 || $code == 3 ]] || fail "decrypt after a rekey killed before its journal: qemu-img check exited $code: $(cat "$TEST_TMP/check.out")"
qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "decrypt after a rekey killed before its journal: the image differs: $(cat "$TEST_TMP/compare.out")"

((KILLS >= 20)) || fail "expected at least 20 kills, got $KILLS"
echo "$KILLS kills at named fault points, each resumed to an image under a new DEK" >&2
