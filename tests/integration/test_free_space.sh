#!/usr/bin/env bash
# A full file system: encrypt, decrypt and consolidate-snapshots check the free space before their first
# write (exit 6, every file unchanged), and the message of an ENOSPC that comes anyway names the state
# of the disk and what to run. The small file systems are tmpfs mounts in a private user and mount namespace, so
# the test needs no root and leaves no mount behind.
set -euo pipefail

if [[ -z ${VMCRYPT_FREE_SPACE_NAMESPACE:-} ]] && unshare --user --map-root-user --mount true 2>/dev/null; then
    VMCRYPT_FREE_SPACE_NAMESPACE=1 exec unshare --user --map-root-user --mount bash "$0" "$@"
fi
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SMALL_MOUNTS=()

# Mounts a tmpfs of SIZE on the new folder DIR, or returns 1 when this process may not mount.
mount_small_fs() {
    local dir=$1 size=$2
    mkdir "$dir"
    [[ -n ${VMCRYPT_FREE_SPACE_NAMESPACE:-} ]] || return 1
    mount -t tmpfs -o "size=$size" tmpfs "$dir" || return 1
    SMALL_MOUNTS+=("$dir")
}

# The mounts go before lib.sh's exit trap removes the temporary folder.
unmount_small_fs() {
    local status=$? dir
    for dir in "${SMALL_MOUNTS[@]}"; do
        umount "$dir" 2>/dev/null || true
    done
    set +e  # else the failing status below ends the trap before the cleanup
    (exit "$status")
    cleanup_test_tmp
}
trap unmount_small_fs EXIT

available_bytes() {
    df -B1 --output=avail "$1" | tail -1 | tr -d ' '
}

# Fills the file system of DIR with DIR/filler until KEEP bytes are left.
fill_until() {
    local dir=$1 keep=$2 free
    free=$(available_bytes "$dir")
    ((free > keep)) || return 0
    head -c "$((free - keep))" /dev/zero >"$dir/filler"
}

# Fails unless the key store contains the keys listed in the file EXPECTED (ls -A output).
expect_keystore_unchanged() {
    if ! ls -A "$VMCRYPT_KEYSTORE" | cmp -s "$1" -; then
        fail "expected no new key in the key store $2, found: $(ls -A "$VMCRYPT_KEYSTORE")"
    fi
}

# qemu-img check of the encrypted qcow2 IMAGE, with the secret from a 0600 file.
expect_encrypted_qcow2_clean() {
    local image=$1 context=$2
    rm -f "$TEST_TMP/secret.raw"
    "$VMCRYPT" qemu-secret -o "$TEST_TMP/secret.raw" "$image"
    qemu-img check -q --object "secret,id=sec0,file=$TEST_TMP/secret.raw" \
        --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" ||
        fail "qemu-img check of $image $context failed"
}

expect_qcow2_same_as_raw() {
    local image=$1 raw=$2 context=$3
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "expected $image to equal $raw $context: $(cat "$TEST_TMP/compare.out")"
}

# A qcow2 image with compressed clusters: 8 MiB of base64 text behind 4 MiB of zeros.
source_raw="$TEST_TMP/compressed.raw"
{ head -c 4M /dev/zero; head -c 6M /dev/urandom | base64 -w 0 | head -c 8M; } >"$source_raw"
qemu-img convert -c -f raw -O qcow2 "$source_raw" "$TEST_TMP/compressed.qcow2"

if mount_small_fs "$TEST_TMP/small" 24M; then
    # 1. qcow2 encrypt without room for the decompressed clusters, the LUKS area and the journal.
    dir="$TEST_TMP/small"
    image="$dir/c.qcow2"
    cp "$TEST_TMP/compressed.qcow2" "$image"
    fill_until "$dir" $((3 << 20))
    sha256sum "$image" >"$TEST_TMP/image.sha"
    ls -A "$VMCRYPT_KEYSTORE" >"$TEST_TMP/keys"
    expect_exit 6 "$VMCRYPT" encrypt "$image"
    expect_stderr_contains "$image: not enough free space for the encrypt on the file system of $dir"
    expect_stderr_contains ") are available"
    expect_stderr_contains "nothing was written"
    sha256sum -c --quiet "$TEST_TMP/image.sha" || fail "the image changed after a rejected encrypt"
    [[ ! -e $image.vmcrypt-journal ]] || fail "a rejected encrypt left a journal"
    expect_keystore_unchanged "$TEST_TMP/keys" "after an encrypt rejected for lack of space"
    # The needed bytes the message names are an upper bound of what the encrypt allocates.
    needed=$(sed -n 's/.*it needs \([0-9]*\) bytes.*/\1/p' "$TEST_TMP/last.stderr")
    [[ -n $needed ]] || fail "the message names no needed bytes: $LAST_STDERR"

    journal=$(sed -n 's/.*the journal \([0-9]*\)).*/\1/p' "$TEST_TMP/last.stderr")
    [[ -n $journal ]] || fail "the message names no journal bytes: $LAST_STDERR"

    # With exactly the named bytes free the same command encrypts, and the image grows by no more
    # than the check counted (the journal is gone at the end) and by not much less.
    rm "$dir/filler"
    fill_until "$dir" "$needed"
    used_before=$(du -B1 "$image" | cut -f1)
    expect_exit 0 "$VMCRYPT" encrypt "$image"
    rm "$dir/filler"
    growth=$(($(du -B1 "$image" | cut -f1) - used_before))
    ((growth <= needed - journal)) ||
        fail "encrypt allocated $growth bytes, more than the $((needed - journal)) bytes it checked for besides the journal"
    ((needed - journal - growth <= 256 * 1024)) ||
        fail "encrypt checked for $((needed - journal)) bytes besides the journal but allocated only $growth"
    expect_encrypted_qcow2_clean "$image" "after an encrypt on a small file system"

    # 2. decrypt on a full file system: no room for the journal, nothing written.
    fill_until "$dir" 0
    sha256sum "$image" >"$TEST_TMP/image.sha"
    expect_exit 6 "$VMCRYPT" decrypt "$image"
    expect_stderr_contains "not enough free space for the decrypt"
    expect_stderr_contains "the journal"
    sha256sum -c --quiet "$TEST_TMP/image.sha" || fail "the image changed after a rejected decrypt"
    rm "$dir/filler"
    expect_exit 0 "$VMCRYPT" decrypt "$image"
    expect_qcow2_same_as_raw "$image" "$source_raw" "after encrypt and decrypt on a small file system"

    # 3. consolidate-snapshots of a VMDK chain whose delta allocates 4 MiB of new grains in the base.
    chain="$TEST_TMP/chain-small"
    mount_small_fs "$chain" 24M
    qemu-img create -q -f vmdk -o subformat=monolithicSparse "$chain/base.vmdk" 64M
    qemu-io -f vmdk -c 'write -P 0x11 0 8M' "$chain/base.vmdk" >/dev/null
    (cd "$chain" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk base-000001.vmdk)
    qemu-io -f vmdk -c 'write -P 0x22 16M 4M' -c 'write -P 0x33 512k 64k' "$chain/base-000001.vmdk" >/dev/null
    export_raw "$chain/base-000001.vmdk" "$TEST_TMP/chain.raw"
    fill_until "$chain" $((2 << 20))
    hash_disk_files "$chain" >"$TEST_TMP/hashes"
    expect_exit 6 "$VMCRYPT" consolidate-snapshots "$chain/base-000001.vmdk"
    expect_stderr_contains "not enough free space for the merge"
    expect_stderr_contains "data copied into base.vmdk"
    expect_contents_unchanged "$chain" "$TEST_TMP/hashes" "a merge rejected for lack of space"
    rm "$chain/filler"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$chain/base-000001.vmdk"
    expect_same_as_raw "$chain/base.vmdk" "$TEST_TMP/chain.raw" "after the merge on a small file system"

    # 4. VMDK encrypt of a sparse extent whose allocated grains hold zeros that cp stored as holes: the
    # rewrite writes those zeros back, so they need space too.
    vdir="$TEST_TMP/vmdk-small"
    mount_small_fs "$vdir" 24M
    qemu-img create -q -f vmdk -o subformat=monolithicSparse "$TEST_TMP/holes.vmdk" 32M
    qemu-io -f vmdk -c 'write -P 0x5a 0 2M' -c 'write -P 0 4M 8M' "$TEST_TMP/holes.vmdk" >/dev/null
    export_raw "$TEST_TMP/holes.vmdk" "$TEST_TMP/holes.raw"
    cp --sparse=always "$TEST_TMP/holes.vmdk" "$vdir/holes.vmdk"
    fill_until "$vdir" $((4 << 20))
    hash_disk_files "$vdir" >"$TEST_TMP/hashes"
    ls -A "$VMCRYPT_KEYSTORE" >"$TEST_TMP/keys"
    expect_exit 6 "$VMCRYPT" encrypt "$vdir/holes.vmdk"
    expect_stderr_contains "data written into holes of holes.vmdk"
    expect_contents_unchanged "$vdir" "$TEST_TMP/hashes" "a VMDK encrypt rejected for lack of space"
    expect_keystore_unchanged "$TEST_TMP/keys" "after a VMDK encrypt rejected for lack of space"
    rm "$vdir/filler"
    expect_exit 0 "$VMCRYPT" encrypt "$vdir/holes.vmdk"
    expect_exit 0 "$VMCRYPT" decrypt "$vdir/holes.vmdk"
    expect_same_as_raw "$vdir/holes.vmdk" "$TEST_TMP/holes.raw" "after a round trip on a small file system"
else
    note "cannot mount a tmpfs in a user namespace here; the small file system cases are skipped"
fi

# 5. ENOSPC after the check (injected): during the qcow2 decompression, before the journal exists.
image="$TEST_TMP/enospc.qcow2"
cp "$TEST_TMP/compressed.qcow2" "$image"
expect_exit 6 env VMCRYPT_FAULT=qcow2-decompressed-written:1:enospc "$VMCRYPT" encrypt "$image"
expect_stderr_contains "No space left on device"
expect_stderr_contains "nothing is encrypted yet and the disk is still valid plaintext"
expect_stderr_contains "free space on that file system and run \`vmcrypt encrypt $image\` again"
expect_qcow2_same_as_raw "$image" "$source_raw" "after an ENOSPC during the decompression"

# 6. ENOSPC in the middle of the rewrite: the message names the command that resumes, and the resume finishes.
expect_exit 6 env VMCRYPT_FAULT=window-synced:1:enospc "$VMCRYPT" encrypt --window-size 1 "$image"
expect_stderr_contains "the encrypt is unfinished but the disk is consistent: free space on that file system"
expect_stderr_contains "to resume"
expect_exit 0 "$VMCRYPT" encrypt "$image"
expect_encrypted_qcow2_clean "$image" "after the resumed encrypt"
expect_exit 0 "$VMCRYPT" decrypt "$image"
expect_qcow2_same_as_raw "$image" "$source_raw" "after an ENOSPC in the rewrite and a resume"
