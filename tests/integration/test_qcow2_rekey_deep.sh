#!/usr/bin/env bash
# Deep rekey of qcow2 images that vmcrypt encrypted, on a default and an extended L2 image, each with
# an ext4 file system and qemu-io patterns. A deep rekey gives the image a new DEK and a new LUKS area
# for it. Afterwards QEMU opens the image with the secret that `vmcrypt qemu-secret` derives from the new
# DEK and rejects the old secret. With it, qemu-img compare finds the original guest data and qemu-img
# check finds no errors or leaks. An AES-XTS check independent of vmcrypt finds every unit under the new
# DEK and none under the old one. Decrypt then returns the original data, and e2fsck passes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

"$PYTHON" -c 'import cryptography' 2>/dev/null ||
    fail "python3 module cryptography is missing (Debian package python3-cryptography); the DEK checks need it"

head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"

# Runs qemu-img SUBCOMMAND on the encrypted IMAGE opened with SECRET (a --object argument), with any
# further arguments after the image, and sets QEMU_EXIT to its exit code.
qemu_img_with_secret() {
    local subcommand=$1 image=$2 secret=$3
    shift 3
    QEMU_EXIT=0
    qemu-img "$subcommand" --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
        "$@" >"$TEST_TMP/qemu-img.out" 2>&1 || QEMU_EXIT=$?
}

# Fails unless QEMU opens IMAGE with SECRET, reads RAW's data from it and finds it free of errors and leaks.
expect_qemu_reads() {
    local image=$1 raw=$2 secret=$3 context=$4
    qemu_img_with_secret compare "$image" "$secret" "driver=raw,file.filename=$raw"
    [[ $QEMU_EXIT == 0 ]] || fail "$context: qemu-img compare with the secret exited $QEMU_EXIT: $(cat "$TEST_TMP/qemu-img.out")"
    qemu_img_with_secret check "$image" "$secret"
    [[ $QEMU_EXIT == 0 ]] || fail "$context: qemu-img check with the secret exited $QEMU_EXIT: $(cat "$TEST_TMP/qemu-img.out")"
}

# Fails unless QEMU rejects SECRET for IMAGE because no LUKS key slot opens with it.
expect_qemu_rejects() {
    local image=$1 secret=$2 context=$3
    qemu_img_with_secret check "$image" "$secret"
    [[ $QEMU_EXIT != 0 ]] || fail "$context: QEMU still opens the image with the old secret"
    grep -q "Invalid password" "$TEST_TMP/qemu-img.out" ||
        fail "$context: expected QEMU to reject the old secret as a wrong password, got: $(cat "$TEST_TMP/qemu-img.out")"
}

luks_area_of() {
    "$VMCRYPT" inspect --json "$1" >"$TEST_TMP/inspect.json"
    echo "$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.offset):$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.length)"
}

roundtrip() {
    local name=$1
    shift
    local dir="$TEST_TMP/$name"
    local image="$dir/disk.qcow2" raw="$dir/plain.raw" map="$dir/map.json"
    mkdir "$dir"
    make_qcow2_ext4 "$image" "$raw" "$@"
    qemu-img map -f qcow2 --output=json "$image" >"$map"

    expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$image"
    local old_secret old_dek old_area
    old_secret=$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image")
    old_dek=$(qcow2_dek_of "$image" "$TEST_TMP/a.key")
    old_area=$(luks_area_of "$image")
    check_qcow2_units "$image" "$map" "$raw" "$old_dek" "" "($name) after encrypt"

    # Same KEK, new DEK.
    expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" "$image"
    [[ ! -e $image.vmcrypt-journal ]] || fail "$name: the deep rekey left its journal behind"
    local new_secret new_dek
    new_secret=$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/a.key" "$image")
    new_dek=$(qcow2_dek_of "$image" "$TEST_TMP/a.key")
    [[ $new_dek != "$old_dek" ]] || fail "$name: the DEK did not change in a deep rekey"
    [[ $new_secret != "$old_secret" ]] || fail "$name: the QEMU secret did not change with the DEK"
    [[ $(luks_area_of "$image") != "$old_area" ]] || fail "$name: the deep rekey kept the old LUKS area"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt ]] ||
        fail "$name: expected inspect to report vmcrypt encryption after the deep rekey"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) != *0x766d636e* ]] ||
        fail "$name: the next LUKS area extension is still in the header after the deep rekey"
    check_qcow2_units "$image" "$map" "$raw" "$new_dek" "$old_dek" "($name) after a deep rekey"
    expect_qemu_reads "$image" "$raw" "$new_secret" "$name: after a deep rekey"
    expect_qemu_rejects "$image" "$old_secret" "$name: after a deep rekey"

    # A new DEK and a new KEK at once: the old key file is rejected afterwards.
    old_dek=$new_dek
    old_secret=$new_secret
    expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$image"
    new_secret=$("$VMCRYPT" qemu-secret --key-file "$TEST_TMP/b.key" "$image")
    new_dek=$(qcow2_dek_of "$image" "$TEST_TMP/b.key")
    check_qcow2_units "$image" "$map" "$raw" "$new_dek" "$old_dek" "($name) after a deep rekey to a new KEK"
    expect_qemu_reads "$image" "$raw" "$new_secret" "$name: after a deep rekey to a new KEK"
    expect_qemu_rejects "$image" "$old_secret" "$name: after a deep rekey to a new KEK"
    hash_disk_files "$dir" >"$TEST_TMP/hashes"
    expect_exit 4 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" "$image"
    expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$image"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "commands with the replaced key file"

    expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$image"
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "$name: the decrypted image differs from the original: $(cat "$TEST_TMP/compare.out")"
    qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
        fail "$name: qemu-img check of the decrypted image failed (leaks or errors): $(cat "$TEST_TMP/check.out")"
    qemu-img convert -f qcow2 -O raw "$image" "$dir/decrypted.raw"
    e2fsck -fn "$dir/decrypted.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
        fail "$name: e2fsck -fn of the decrypted file system failed: $(cat "$TEST_TMP/e2fsck.out")"
    rm -rf "$dir"
    echo "$TEST_NAME: $name: deep rekeyed twice, read by QEMU with the new secret, decrypted"
}

roundtrip default
roundtrip extended-l2 -o extended_l2=on
