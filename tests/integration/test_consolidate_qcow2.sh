#!/usr/bin/env bash
# consolidate-snapshots on qcow2: a chain of 3 (ext4 changes, pattern, zero and compressed writes in
# every layer, the last sector, extended L2 in the top) merged into a qcow2 base of version 3 and of
# version 2, and into a raw base; an image with 2 internal snapshots; and a chain whose base has an
# internal snapshot. Each result must equal the qemu-img convert export of the original top (or
# active state) taken before, pass qemu-img check without errors or leaks, pass e2fsck, and survive
# vmcrypt encrypt and decrypt unchanged.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_qcow2_lib.sh"

# Fails unless the ext4 file system in the raw image RAW is clean and holds both added files.
expect_ext4_with_added_files() {
    local raw=$1 context=$2
    e2fsck -fn "$raw" >"$TEST_TMP/e2fsck.out" 2>&1 || fail "e2fsck found errors $context: $(cat "$TEST_TMP/e2fsck.out")"
    local file
    for file in added-in-mid.txt added-in-top.txt marker.txt; do
        debugfs -R "stat /$file" "$raw" 2>/dev/null | grep "Inode:" >/dev/null || fail "$context: /$file is missing from the ext4 file system"
    done
}

# Merges the chain of make_qcow2_chain (base OPTIONS; with STRATEGY stream, the top also gets 31 MiB of
# data, so that copying the rest into the top costs less) and checks the result.
merge_chain() {
    local name=$1 options=${2:-} strategy=${3:-commit}
    local dir="$TEST_TMP/$name"
    mkdir -p "$dir"
    make_qcow2_chain "$dir" "$options"
    if [[ $strategy == stream ]]; then
        qemu-img snapshot -c in-top "$dir/top.qcow2"
        qemu-io -f qcow2 -c "write -P 0x3c 32M 31M" -c "write -z 33M 64k" "$dir/top.qcow2" >/dev/null
    fi
    qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$dir/expected.raw"
    hash_folder "$dir" >"$TEST_TMP/before.hash"

    expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$dir/top.qcow2"
    grep -q "would merge 2 overlays into $dir/base.qcow2" <<<"$LAST_STDOUT" ||
        fail "$name: unexpected dry-run plan: $LAST_STDOUT"
    grep -q "strategy: $strategy" <<<"$LAST_STDOUT" || fail "$name: expected strategy $strategy in the plan: $LAST_STDOUT"
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || fail "$name: --dry-run changed files"

    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
    grep -q "the disk is now $dir/base.qcow2" <<<"$LAST_STDOUT" || fail "$name: unexpected output: $LAST_STDOUT"
    [[ ! -e $dir/top.qcow2 && ! -e $dir/mid.qcow2 ]] || fail "$name: the overlays are still there: $(ls "$dir")"
    [[ ! -e $dir/base.qcow2.vmcrypt-consolidate-qcow2 ]] || fail "$name: the intent file is still there"
    [[ -z $(qemu-img info --output=json "$dir/base.qcow2" | grep '"backing-filename"') ]] ||
        fail "$name: the base has a backing file"
    [[ -z $(qemu-img snapshot -l "$dir/base.qcow2") ]] || fail "$name: the merged base has internal snapshots"

    expect_qcow2_equals_raw "$dir/base.qcow2" "$dir/expected.raw" "($name, after the merge)"
    expect_qcow2_check_clean "$dir/base.qcow2" "($name, after the merge)"
    qemu-img convert -f qcow2 -O raw "$dir/base.qcow2" "$dir/merged.raw"
    expect_ext4_with_added_files "$dir/merged.raw" "($name, after the merge)"
    expect_qcow2_encrypt_roundtrip "$dir/base.qcow2" "$dir/expected.raw"
    note "$name: merged and checked"
}

merge_chain v3
merge_chain v2 compat=0.10
merge_chain stream "" stream

# The same guest data over a raw base (-F raw at the bottom of the chain).
dir="$TEST_TMP/raw-base"
mkdir -p "$dir"
make_qcow2_chain "$dir"
(
    cd "$dir"
    qemu-img convert -f qcow2 -O raw base.qcow2 base.raw
    qemu-img rebase -u -b base.raw -F raw mid.qcow2
    rm base.qcow2
)
qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$dir/expected.raw"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
grep -q "the disk is now $dir/base.raw" <<<"$LAST_STDOUT" || fail "raw base: unexpected output: $LAST_STDOUT"
cmp "$dir/base.raw" "$dir/expected.raw" || fail "raw base: the merged base differs from the top's export"
[[ ! -e $dir/top.qcow2 && ! -e $dir/mid.qcow2 ]] || fail "raw base: the overlays are still there"

# An image with 2 internal snapshots: both deleted, the active state kept.
dir="$TEST_TMP/snapshots"
mkdir -p "$dir"
make_qcow2_chain "$dir"
(
    cd "$dir"
    qemu-img convert -f qcow2 -O qcow2 top.qcow2 image.qcow2
    rm base.qcow2 mid.qcow2 top.qcow2
    qemu-img snapshot -c first image.qcow2
    qemu-io -f qcow2 -c "write -P 0x41 0 1M" -c "write -z 40M 2M" image.qcow2 >/dev/null
    qemu-img snapshot -c second image.qcow2
    qemu-io -f qcow2 -c "write -P 0x42 512k 1M" -c "write -P 0x43 50M 3M" image.qcow2 >/dev/null
    qemu-img convert -f qcow2 -O raw image.qcow2 expected.raw
)
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/image.qcow2"
grep -q "2 internal snapshots deleted" <<<"$LAST_STDOUT" || fail "snapshots: unexpected output: $LAST_STDOUT"
[[ -z $(qemu-img snapshot -l "$dir/image.qcow2") ]] ||
    fail "snapshots: qemu-img snapshot -l still lists snapshots: $(qemu-img snapshot -l "$dir/image.qcow2")"
expect_qcow2_equals_raw "$dir/image.qcow2" "$dir/expected.raw" "(after deleting the internal snapshots)"
expect_qcow2_check_clean "$dir/image.qcow2" "(after deleting the internal snapshots)"
expect_qcow2_encrypt_roundtrip "$dir/image.qcow2" "$dir/expected.raw"

# A chain whose base has an internal snapshot: it is deleted, then the overlays merged.
dir="$TEST_TMP/chain-over-snapshot"
mkdir -p "$dir"
make_qcow2_chain "$dir"
qemu-img snapshot -c kept-by-base "$dir/base.qcow2"
qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$dir/expected.raw"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
[[ -z $(qemu-img snapshot -l "$dir/base.qcow2") ]] || fail "chain over a snapshot: the base still has snapshots"
expect_qcow2_equals_raw "$dir/base.qcow2" "$dir/expected.raw" "(chain over a base with a snapshot)"
expect_qcow2_check_clean "$dir/base.qcow2" "(chain over a base with a snapshot)"
