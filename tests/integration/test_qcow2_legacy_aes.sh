#!/usr/bin/env bash
# Legacy qcow AES images (crypt_method 1), made by qemu-img 7.2 with a password. inspect reports them
# as insecure. decrypt turns them into plain qcow2 images with the same guest data, also when killed
# at any step and resumed, and a missing or wrong password writes nothing (exit 4). libqcow, which
# reads this format with the password, confirms the bytes that qemu-img reads before and after.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

IMAGE_SIZE=64M
PASSWORD=PASS
printf '%s' "$PASSWORD" >"$TEST_TMP/password"
printf '%s' WRONG >"$TEST_TMP/wrong"
secret_object="secret,id=sec0,data=$PASSWORD"

# Creates IMAGE, a legacy AES qcow2 holding an ext4 file system and qemu-io pattern writes, made with
# qemu-img convert OPTIONS, and exports QEMU's view of its guest data to RAW.
make_legacy_image() {
    local image=$1 raw=$2
    shift 2
    local build bytes
    bytes=$(numfmt --from=iec "$IMAGE_SIZE")
    build=$(mktemp -d "$TEST_TMP/build.XXXXXX")
    make_marker_tree "$build/tree"
    truncate -s "$bytes" "$build/fs.raw"
    mkfs.ext4 -q -F -d "$build/tree" "$build/fs.raw" "$EXT4_FS_SIZE"
    qemu-img convert -f raw -O qcow2 --object "$secret_object" \
        -o encrypt.format=aes,encrypt.key-secret=sec0 "$@" "$build/fs.raw" "$image"
    qemu-io --object "$secret_object" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        -c "write -P 0x5a 0 512" -c "write -P 0xa5 $((bytes - 512)) 512" -c "write -P 0x77 8M 3M" \
        -c "write -P 0xc3 $((bytes * 3 / 4 / 65536 * 65536 - 1536)) 4096" -c "write -z 40M 1M" >/dev/null
    export_legacy_raw "$image" "$raw"
    rm -rf "$build"
}

export_legacy_raw() {
    qemu-img convert --object "$secret_object" \
        --image-opts "driver=qcow2,file.filename=$1,encrypt.key-secret=sec0" -O raw "$2"
}

# Fails unless IMAGE is a clean plain qcow2 with the guest data of RAW that e2fsck and libqcow accept.
expect_decrypted() {
    local image=$1 raw=$2 what=$3
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "$what: the decrypted image differs from QEMU's view of the legacy AES one: $(cat "$TEST_TMP/compare.out")"
    qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
        fail "$what: qemu-img check of the decrypted image failed (leaks or errors): $(cat "$TEST_TMP/check.out")"
    expect_exit 0 "$VMCRYPT" inspect --json "$image"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.cryptMethod) == 0 ]] ||
        fail "$what: expected crypt method 0 after decrypt"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) != *0x766d6372* ]] ||
        fail "$what: the vmcrypt record is still in the header after decrypt"
    qemu-img convert -f qcow2 -O raw "$image" "$TEST_TMP/decrypted.raw"
    e2fsck -fn "$TEST_TMP/decrypted.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
        fail "$what: e2fsck -fn of the decrypted file system failed: $(cat "$TEST_TMP/e2fsck.out")"
    rm -f "$TEST_TMP/decrypted.raw"
    expect_libqcow_reads "$image" "$raw"
}

dir="$TEST_TMP/legacy"
mkdir "$dir"
image="$dir/disk.qcow2"
make_legacy_image "$image" "$dir/plain.raw"
cp "$image" "$TEST_TMP/original.qcow2"

# The cipher rule vmcrypt uses (AES-128-CBC, IV = guest sector) is libqcow's too: both read QEMU's bytes.
expect_libqcow_reads "$image" "$dir/plain.raw" "$PASSWORD"
if grep -qF "$PLAINTEXT_MARKER" "$image"; then
    fail "the plaintext marker is readable in the legacy AES image; qemu-img did not encrypt it"
fi

# inspect: insecure, why, and what to do.
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == legacy-aes ]] ||
    fail "expected inspect to report encryption legacy-aes"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.insecure) == true ]] || fail "expected inspect to report insecure: true"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.insecureReason) == *"predictable IV"*"password is used directly as the key"* ]] ||
    fail "expected the insecure reason to name the predictable IV and the password key"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.recommendation) == *"vmcrypt decrypt --passphrase"*"vmcrypt encrypt"* ]] ||
    fail "expected the recommendation to decrypt, then encrypt"
expect_exit 0 "$VMCRYPT" inspect "$image"
[[ $LAST_STDOUT == *INSECURE* && $LAST_STDOUT == *"predictable IV"* && $LAST_STDOUT == *"vmcrypt decrypt"* ]] ||
    fail "expected the text report to flag the image as insecure with the reason and the fix: $LAST_STDOUT"

# Encrypt refuses it; decrypt without or with a wrong password writes nothing.
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$image"
expect_stderr_contains "vmcrypt decrypt --passphrase"
expect_exit 4 "$VMCRYPT" decrypt "$image"
expect_stderr_contains "--passphrase-file"
expect_exit 4 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/wrong" "$image"
expect_stderr_contains "password"
VMCRYPT_PASSPHRASE=WRONG expect_exit 4 "$VMCRYPT" decrypt "$image"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt, and decrypt without the right password"
[[ ! -e $image.vmcrypt-journal ]] || fail "a journal was left after the rejected decrypts"

# The password from the environment decrypts it.
VMCRYPT_PASSPHRASE=$PASSWORD expect_exit 0 "$VMCRYPT" decrypt "$image"
expect_decrypted "$image" "$dir/plain.raw" "decrypt"
if [[ $(grep -cF "$PLAINTEXT_MARKER" "$image") == 0 ]]; then
    fail "the plaintext marker is not in the decrypted image"
fi

# Killed at each step of the decrypt, the image is guarded (QEMU refuses it) and the same command resumes.
KILLS=0
for point in before-journal-create:1 journal-created:1 start-metadata-written:1 window-journaled:2 \
    window-half-written:3 window-synced:4 finalize-journaled:1 final-metadata-written:1; do
    cp "$TEST_TMP/original.qcow2" "$image"
    code=0
    { VMCRYPT_FAULT="$point:kill" "$VMCRYPT" decrypt --window-size 1 --passphrase-file "$TEST_TMP/password" \
        "$image" >"$TEST_TMP/killed.out" 2>&1; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "decrypt at $point: expected a kill (exit 137), got $code: $(cat "$TEST_TMP/killed.out")"
    KILLS=$((KILLS + 1))
    if [[ $point == window-* ]]; then
        if qemu-img info "$image" >"$TEST_TMP/info.out" 2>&1; then
            fail "decrypt killed at $point: expected qemu-img info to reject the half-decrypted image"
        fi
        expect_exit 0 "$VMCRYPT" inspect --json "$image"
        echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
        [[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt-in-progress ]] ||
            fail "decrypt killed at $point: expected inspect to report vmcrypt-in-progress"
        # A wrong password does not resume it and changes nothing.
        hash_disk_files "$dir" >"$TEST_TMP/hashes"
        expect_exit 4 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/wrong" "$image"
        expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "resume with a wrong password after a kill at $point"
    fi
    expect_exit 0 "$VMCRYPT" decrypt --window-size 1 --passphrase-file "$TEST_TMP/password" "$image"
    expect_decrypted "$image" "$dir/plain.raw" "decrypt resumed after a kill at $point"
done

# A 512-byte-cluster image, and one with a compressed cluster: QEMU 7.2 writes compressed clusters of a
# legacy AES image without encrypting them (and reads them so), so decrypt keeps them as they are.
rm -rf "$dir"
mkdir "$dir"
make_legacy_image "$image" "$dir/plain.raw" -o cluster_size=512
expect_exit 0 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/password" "$image"
expect_decrypted "$image" "$dir/plain.raw" "decrypt of a 512-byte-cluster image"

rm -rf "$dir"
mkdir "$dir"
make_legacy_image "$image" "$dir/plain.raw"
qemu-io --object "$secret_object" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    -c "write -c -P 0x3c 36M 64k" >"$TEST_TMP/qemu-io.out" 2>&1 ||
    fail "qemu-io could not write a compressed cluster into the legacy AES image: $(cat "$TEST_TMP/qemu-io.out")"
export_legacy_raw "$image" "$dir/plain.raw"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.allocation.compressedClusters) == 1 ]] ||
    fail "expected qemu-io to have written one compressed cluster into the legacy AES image"
expect_exit 0 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/password" "$image"
expect_decrypted "$image" "$dir/plain.raw" "decrypt of an image with a compressed cluster"

echo "$KILLS kills during a legacy AES decrypt, each resumed to an identical image" >&2
