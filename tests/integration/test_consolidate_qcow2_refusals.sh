#!/usr/bin/env bash
# consolidate-snapshots on qcow2 chains it must not merge: a missing backing file, a loop, an
# encrypted layer (QEMU LUKS and vmcrypt), a top smaller than the base, another image using the chain
# (without --delete-other-branches), a backing file of unknown format, and a layer that QEMU holds
# open. Each must fail with one error line naming the file and the fix, the documented exit code, and
# every file unchanged (hashes before and after).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_qcow2_lib.sh"

# Makes folder DIR with base.qcow2 <- mid.qcow2 <- top.qcow2 (64 MiB), a few writes in each.
make_small_chain() {
    local dir=$1
    mkdir -p "$dir"
    (
        cd "$dir"
        qemu-img create -q -f qcow2 base.qcow2 64M
        qemu-io -f qcow2 -c "write -P 0x11 0 1M" base.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
        qemu-io -f qcow2 -c "write -P 0x21 64k 64k" mid.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
        qemu-io -f qcow2 -c "write -z 0 64k" top.qcow2 >/dev/null
    )
}

# Runs consolidate-snapshots on DISK in DIR (and --dry-run), expecting exit code CODE, an error
# containing TEXT, and every file of DIR unchanged.
expect_rejected() {
    local dir=$1 disk=$2 code=$3 text=$4
    hash_folder "$dir" >"$TEST_TMP/before.hash"
    local options
    for options in --dry-run ""; do
        expect_exit "$code" "$VMCRYPT" consolidate-snapshots $options "$disk"
        check_one_error_line
        expect_stderr_contains "$text"
    done
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" ||
        fail "files in $dir changed after a rejected consolidate-snapshots of $disk:
$(diff "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || true)"
    [[ -z $(find "$dir" -name '*.vmcrypt-consolidate-qcow2') ]] || fail "an intent file was left in $dir"
}

dir="$TEST_TMP/missing"
make_small_chain "$dir"
mv "$dir/base.qcow2" "$dir/moved.qcow2"
expect_rejected "$dir" "$dir/top.qcow2" 3 "backing file \"base.qcow2\" ($dir/base.qcow2) not found"

dir="$TEST_TMP/loop"
make_small_chain "$dir"
qemu-img rebase -u -b top.qcow2 -F qcow2 "$dir/base.qcow2"
expect_rejected "$dir" "$dir/top.qcow2" 3 "so the chain loops"

dir="$TEST_TMP/qemu-luks"
mkdir -p "$dir"
qemu_img_retrying create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "$dir/base.qcow2" 64M
qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 "$dir/top.qcow2" 64M
expect_rejected "$dir" "$dir/top.qcow2" 3 "$dir/base.qcow2: the image is encrypted (crypt_method 2)"

dir="$TEST_TMP/vmcrypt-encrypted"
mkdir -p "$dir"
qemu-img create -q -f qcow2 "$dir/base.qcow2" 64M
qemu-img create -q -f qcow2 "$dir/mid.qcow2" 64M
expect_exit 0 "$VMCRYPT" encrypt "$dir/mid.qcow2"
# QEMU opens the image that vmcrypt encrypted with the secret vmcrypt prints.
qemu-img rebase -q -u --object "$("$VMCRYPT" qemu-secret "$dir/mid.qcow2")" \
    --image-opts "driver=qcow2,file.filename=$dir/mid.qcow2,encrypt.key-secret=sec0" -b base.qcow2 -F qcow2
qemu-img create -q -f qcow2 -u -b mid.qcow2 -F qcow2 "$dir/top.qcow2" 64M
expect_rejected "$dir" "$dir/top.qcow2" 3 "$dir/mid.qcow2: the image is encrypted"

dir="$TEST_TMP/smaller-top"
make_small_chain "$dir"
qemu-img resize -q --shrink "$dir/top.qcow2" 32M
expect_rejected "$dir" "$dir/top.qcow2" 3 "is smaller than the base's 67108864 bytes"

dir="$TEST_TMP/other-child"
make_small_chain "$dir"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$dir/sibling.qcow2"
expect_rejected "$dir" "$dir/top.qcow2" 3 "other images use this chain as their backing file, and merging would change what they read: $dir/sibling.qcow2 (backing file $dir/mid.qcow2)"

dir="$TEST_TMP/vmdk-backing"
mkdir -p "$dir"
qemu-img create -q -f vmdk "$dir/base.vmdk" 64M
qemu-img create -q -f qcow2 -b base.vmdk -F vmdk "$dir/top.qcow2"
expect_rejected "$dir" "$dir/top.qcow2" 3 "has format \"vmdk\""

dir="$TEST_TMP/in-use"
make_small_chain "$dir"
hold_image_open "$dir/top.qcow2" qcow2
expect_rejected "$dir" "$dir/top.qcow2" 5 "$dir/top.qcow2"
release_image
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
[[ ! -e $dir/top.qcow2 ]] || fail "after the image was released, the merge did not remove the top"
