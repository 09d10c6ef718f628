#!/usr/bin/env bash
# consolidate-snapshots of a qcow2 chain whose top was grown (qemu-img resize) after the snapshot: the
# merge grows the base as QEMU's commit does. The cases:
# - a qcow2 base with an ext4 file system that the top grew with resize2fs (L1 table grown in its cluster);
# - a qcow2 base whose L1 table must move to new clusters;
# - a raw base (extended);
# - a chain merged by stream (the base needs no grow).
# Each must be
# identical to the top's export taken before, with the top's guest size, qemu-img check clean and
# e2fsck clean where a file system is in it. Kills at the grow's fault points must resume to the same.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_qcow2_lib.sh"

# Fails unless IMAGE (of FORMAT) has SIZE guest bytes.
expect_virtual_size() {
    local image=$1 format=$2 size=$3 context=$4 actual
    actual=$(qemu-img info -f "$format" --output=json "$image" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
    [[ $actual == "$size" ]] || fail "expected $image to have $size guest bytes $context, got $actual"
}

# A 64 MiB qcow2 base (4 KiB clusters, so one L1 cluster covers 1 GiB) with an ext4 file system of
# 16 MiB of files. The top is grown to 128 MiB and its file system with resize2fs, and gets a new file
# and a write in the last sector.
fs_template="$TEST_TMP/fs-template"
mkdir -p "$fs_template/work"
(
    cd "$fs_template"
    make_marker_tree work/tree
    head -c 16M /dev/urandom >work/tree/sub/large.bin  # so that commit copies less than stream
    truncate -s 64M work/fs.raw
    mkfs.ext4 -q -F -d work/tree work/fs.raw
    qemu-img convert -f raw -O qcow2 -o cluster_size=4096 work/fs.raw base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    qemu-img resize -q top.qcow2 128M
    qemu-img convert -f qcow2 -O raw top.qcow2 work/old.raw
    cp --sparse=always work/old.raw work/fs.raw
    resize2fs -f work/fs.raw >/dev/null 2>&1
    debugfs -w -R "write /etc/services added-after-grow.txt" work/fs.raw >/dev/null 2>&1
    write_changed_blocks work/old.raw work/fs.raw top.qcow2
    rm -rf work
)
fs_expected="$TEST_TMP/fs-expected.raw"
qemu-img convert -f qcow2 -O raw "$fs_template/top.qcow2" "$fs_expected"
e2fsck -fn "$fs_expected" >"$TEST_TMP/e2fsck.out" 2>&1 || fail "test setup: the grown file system has errors: $(cat "$TEST_TMP/e2fsck.out")"

dir="$TEST_TMP/fs"
cp -a --sparse=always "$fs_template" "$dir"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$dir/top.qcow2"
grep -qF "strategy: commit" <<<"$LAST_STDOUT" || fail "file system case: expected commit, got: $LAST_STDOUT"
grep -qF "grow the base to the top's guest size: 128.0 MiB (134217728 bytes)" <<<"$LAST_STDOUT" ||
    fail "file system case: the plan does not name the grow: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
expect_virtual_size "$dir/base.qcow2" qcow2 134217728 "(file system case)"
expect_qcow2_equals_raw "$dir/base.qcow2" "$fs_expected" "(file system case)"
expect_qcow2_check_clean "$dir/base.qcow2" "(file system case)"
qemu-img convert -f qcow2 -O raw "$dir/base.qcow2" "$TEST_TMP/fs-merged.raw"
e2fsck -fn "$TEST_TMP/fs-merged.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
    fail "file system case: e2fsck found errors in the merged base: $(cat "$TEST_TMP/e2fsck.out")"
debugfs -R "cat /added-after-grow.txt" "$TEST_TMP/fs-merged.raw" 2>/dev/null | cmp -s - /etc/services ||
    fail "file system case: the file written after the grow differs in the merged base"
[[ ! -e $dir/top.qcow2 ]] || fail "file system case: the top is still there"
rm -rf "$dir" "$TEST_TMP/fs-merged.raw"

# A base with 4 KiB clusters grown from 64 MiB to 3 GiB: its L1 table (one cluster, 512 entries of
# 2 MiB) needs 1536 entries, so it moves to three new clusters. Writes past the old end and at the last
# sector; the base keeps most data, so the merge takes commit.
move_template="$TEST_TMP/move-template"
mkdir -p "$move_template"
(
    cd "$move_template"
    qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 64M
    qemu-io -f qcow2 -c "write -P 0x11 0 48M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x21 1M 1M" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-img resize -q top.qcow2 3G
    qemu-io -f qcow2 -c "write -P 0x31 2M 64k" -c "write -P 0x32 $((64 * 1048576 - 512)) 4096" \
        -c "write -P 0x33 2G 1M" -c "write -z 100M 1M" -c "write -P 0x34 $((3 * 1073741824 - 512)) 512" top.qcow2 >/dev/null
)
move_expected="$TEST_TMP/move-expected.raw"
qemu-img convert -f qcow2 -O raw "$move_template/top.qcow2" "$move_expected"

dir="$TEST_TMP/move"
cp -a --sparse=always "$move_template" "$dir"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
expect_virtual_size "$dir/base.qcow2" qcow2 3221225472 "(L1 table moved)"
expect_qcow2_equals_raw "$dir/base.qcow2" "$move_expected" "(L1 table moved)"
expect_qcow2_check_clean "$dir/base.qcow2" "(L1 table moved)"
rm -rf "$dir"

# Kills at each step of the grow, and at the first data batch after it. The re-run must cope with a
# base that is grown already and finish with the same result.
for fault in qcow2-grow-l1-written:1 qcow2-grow-header-written:1 qcow2-consolidate-base-grown:1 qcow2-merge-data-written:1; do
    dir="$TEST_TMP/kill"
    cp -a --sparse=always "$move_template" "$dir"
    code=0
    { VMCRYPT_FAULT="$fault:kill" "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2" \
        >"$TEST_TMP/fault.stdout" 2>"$TEST_TMP/fault.stderr"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$fault: expected exit code 137 (fault point reached), got $code: $(cat "$TEST_TMP/fault.stderr")"
    expect_qcow2_equals_raw "$dir/top.qcow2" "$move_expected" "(killed at $fault, before the re-run)"
    code=0
    qemu-img check -f qcow2 "$dir/base.qcow2" >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code == 0 || $code == 3 ]] || fail "$fault: the killed grow left errors (not only leaks) in the base: $(cat "$TEST_TMP/check.out")"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
    expect_virtual_size "$dir/base.qcow2" qcow2 3221225472 "(killed at $fault, after the re-run)"
    expect_qcow2_equals_raw "$dir/base.qcow2" "$move_expected" "(killed at $fault, after the re-run)"
    expect_qcow2_check_clean "$dir/base.qcow2" "(killed at $fault, after the re-run)"
    rm -rf "$dir"
done

# A raw base is extended to the top's size.
dir="$TEST_TMP/raw"
mkdir -p "$dir"
(
    cd "$dir"
    qemu-img create -q -f raw base.raw 64M
    qemu-io -f raw -c "write -P 0x41 0 8M" base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
    qemu-img resize -q top.qcow2 96M
    qemu-io -f qcow2 -c "write -P 0x42 1M 1M" -c "write -P 0x43 80M 1M" -c "write -P 0x44 $((96 * 1048576 - 512)) 512" \
        top.qcow2 >/dev/null
)
qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$TEST_TMP/raw-expected.raw"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
[[ $(stat -c %s "$dir/base.raw") == $((96 * 1048576)) ]] || fail "raw base: expected 96 MiB, got $(stat -c %s "$dir/base.raw") bytes"
cmp -s "$dir/base.raw" "$TEST_TMP/raw-expected.raw" || fail "raw base: the merged base differs from the top's export"
rm -rf "$dir"

# Stream: the top stores most data, so it takes the base's place with its own size; the base is not grown.
dir="$TEST_TMP/stream"
mkdir -p "$dir"
(
    cd "$dir"
    qemu-img create -q -f qcow2 base.qcow2 64M
    qemu-io -f qcow2 -c "write -P 0x51 0 2M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    qemu-img resize -q top.qcow2 128M
    qemu-io -f qcow2 -c "write -P 0x52 4M 40M" -c "write -P 0x53 $((128 * 1048576 - 512)) 512" top.qcow2 >/dev/null
)
qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$TEST_TMP/stream-expected.raw"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$dir/top.qcow2"
grep -qF "strategy: stream" <<<"$LAST_STDOUT" || fail "stream case: expected stream, got: $LAST_STDOUT"
grep -qF "grow the base" <<<"$LAST_STDOUT" && fail "stream case: the plan grows the base, which stream does not need: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
expect_virtual_size "$dir/base.qcow2" qcow2 134217728 "(stream case)"
expect_qcow2_equals_raw "$dir/base.qcow2" "$TEST_TMP/stream-expected.raw" "(stream case)"
expect_qcow2_check_clean "$dir/base.qcow2" "(stream case)"
