#!/usr/bin/env bash
# consolidate-snapshots on chains made by qemu-img and qemu-io: depth 1, 3 and 10, over sparse and flat
# bases, with zeroed grains (qemu-io write -z on zeroed_grain=on deltas) and writes at the last sector.
# After the merge the base must read like the top did (qemu-img compare against a raw export made
# before), pass qemu-img check, carry a new CID, survive vmcrypt encrypt and decrypt, and the deltas
# must be gone. A .vmx next to the top is repointed at the base and its .vmsd snapshot list emptied.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_lib.sh"

# Consolidates the chain of TOP and checks the result against RAW.
consolidate_and_check() {
    local top=$1 raw=$2 base=$3
    local old_cid deltas
    old_cid=$(descriptor_cid "$base")
    mapfile -t deltas < <(ls "$(dirname "$top")"/base-0*.vmdk)

    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$top"
    expect_files_gone "${deltas[@]}"
    [[ ! -e $base.vmcrypt-consolidate ]] || fail "expected no intent file after a finished merge"
    grep -qF "the disk is now $base" <<<"$LAST_STDOUT" ||
        fail "expected the output to name $base as the disk now, got: $LAST_STDOUT"
    local new_cid
    new_cid=$(descriptor_cid "$base")
    [[ -n $new_cid && $new_cid != "$old_cid" ]] ||
        fail "expected the base CID to change from $old_cid, got '$new_cid'"
    expect_disk_equals_raw "$base" "$raw" "after consolidate-snapshots"
    expect_encrypt_roundtrip "$base" "$raw"
}

# Depth 1 over a monolithicSparse base with zeroed grains enabled.
dir="$TEST_TMP/depth1"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 1 zeroed_grain=on)
export_chain_raw "$top" "$TEST_TMP/depth1.raw"
consolidate_and_check "$top" "$TEST_TMP/depth1.raw" "$dir/base.vmdk"

# Depth 3 over a monolithicFlat base; the .vmx and .vmsd of a Workstation VM sit next to the chain.
dir="$TEST_TMP/depth3"
top=$(make_snapshot_chain "$dir" monolithicFlat 64M 3)
export_chain_raw "$top" "$TEST_TMP/depth3.raw"
cat >"$dir/vm.vmx" <<VMX
.encoding = "UTF-8"
displayName = "depth3"
scsi0.present = "TRUE"
scsi0:0.fileName = "base-000003.vmdk"
scsi0:1.fileName = "other.vmdk"
VMX
cat >"$dir/vm.vmsd" <<'VMSD'
.encoding = "UTF-8"
snapshot.lastUID = "3"
snapshot.current = "3"
snapshot0.uid = "1"
snapshot0.filename = "vm-Snapshot1.vmsn"
snapshot0.displayName = "one"
snapshot0.disk0.fileName = "base.vmdk"
snapshot0.numDisks = "1"
snapshot.numSnapshots = "3"
VMSD
# encrypt rejects both ends of the chain and names this command; the command it names for the base
# (one of its snapshots, not the top) must do the merge.
expect_exit 3 "$VMCRYPT" encrypt "$top"
expect_stderr_contains "vmcrypt consolidate-snapshots $top"
expect_exit 3 "$VMCRYPT" encrypt "$dir/base.vmdk"
suggested=$(sed -n 's/.*merge them first with: vmcrypt consolidate-snapshots \(.*\)$/\1/p' "$TEST_TMP/last.stderr")
[[ $suggested == "$dir/base-000001.vmdk" ]] ||
    fail "expected encrypt of the base to suggest consolidating $dir/base-000001.vmdk, got: $LAST_STDERR"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$suggested"
grep -qF "$top" <<<"$LAST_STDOUT" || fail "expected the suggested command to merge up to $top, got: $LAST_STDOUT"

expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$top"
save_dir_state "$dir" "$TEST_TMP/depth3.state"
grep -q "base-000003.vmdk" <<<"$LAST_STDOUT" || fail "expected the dry run to list the top, got: $LAST_STDOUT"
grep -q "bytes to copy" <<<"$LAST_STDOUT" || fail "expected the dry run to print the bytes to copy, got: $LAST_STDOUT"
grep -q "vm.vmx" <<<"$LAST_STDOUT" || fail "expected the dry run to list vm.vmx, got: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$top"
expect_dir_unchanged "$dir" "$TEST_TMP/depth3.state" "consolidate-snapshots --dry-run"
# The dry run reads a .vmx without changing its access time, as it reads the disks.
echo 'scsi0:0.fileName = "other.vmdk"' >"$dir/other.vmx"
touch -d 2020-01-01 "$dir/other.vmx"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run "$top"
[[ $(stat -c %X "$dir/other.vmx") == $(date -d 2020-01-01 +%s) ]] ||
    fail "consolidate-snapshots --dry-run changed the access time of $dir/other.vmx"
rm "$dir/other.vmx"
consolidate_and_check "$top" "$TEST_TMP/depth3.raw" "$dir/base.vmdk"
grep -qx 'scsi0:0.fileName = "base.vmdk"' "$dir/vm.vmx" || fail "expected vm.vmx to name base.vmdk: $(cat "$dir/vm.vmx")"
grep -qx 'scsi0:1.fileName = "other.vmdk"' "$dir/vm.vmx" || fail "expected vm.vmx to keep other.vmdk: $(cat "$dir/vm.vmx")"
grep -qx 'displayName = "depth3"' "$dir/vm.vmx" || fail "expected vm.vmx to keep its other lines: $(cat "$dir/vm.vmx")"
grep -qx 'snapshot.numSnapshots = "0"' "$dir/vm.vmsd" || fail "expected an empty snapshot list: $(cat "$dir/vm.vmsd")"
grep -qx 'snapshot.lastUID = "3"' "$dir/vm.vmsd" || fail "expected snapshot.lastUID to stay: $(cat "$dir/vm.vmsd")"
if grep -q '^snapshot0\.' "$dir/vm.vmsd"; then
    fail "expected the snapshot0 entries to be gone: $(cat "$dir/vm.vmsd")"
fi

# Depth 10 over a monolithicSparse base without zeroed grains, given the middle of the chain:
# the top is found below it; --json names the disk.
dir="$TEST_TMP/depth10"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 10)
export_chain_raw "$top" "$TEST_TMP/depth10.raw"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --json "$dir/base-000004.vmdk"
echo "$LAST_STDOUT" >"$TEST_TMP/depth10.json"
[[ $(json_value "$TEST_TMP/depth10.json" disk) == "$dir/base.vmdk" ]] ||
    fail "expected --json to name $dir/base.vmdk as the disk, got: $LAST_STDOUT"
[[ $(json_value "$TEST_TMP/depth10.json" top) == "$dir/base-000010.vmdk" ]] ||
    fail "expected --json to name base-000010.vmdk as the top, got: $LAST_STDOUT"
expect_files_gone "$dir"/base-0000{01..10}.vmdk
expect_disk_equals_raw "$dir/base.vmdk" "$TEST_TMP/depth10.raw" "after consolidating a depth-10 chain"
expect_encrypt_roundtrip "$dir/base.vmdk" "$TEST_TMP/depth10.raw"

# Depth 2 whose top stores more than the disks below it: the data below the top is streamed into the
# top, which then replaces the base file. The base keeps its descriptor, except the new CID.
dir="$TEST_TMP/stream"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 2 zeroed_grain=on)
qemu-io -f vmdk -c "write -P 0x61 0 32M" -c "write -z 2M 128k" "$top" >/dev/null
echo 'scsi0:0.fileName = "base-000002.vmdk"' >"$dir/vm.vmx"
export_chain_raw "$top" "$TEST_TMP/stream.raw"
read_descriptor "$dir/base.vmdk" >"$TEST_TMP/stream-descriptor.before"
expect_exit 0 "$VMCRYPT" consolidate-snapshots "$top"
grep -q "by streaming into the top" <<<"$LAST_STDOUT" || fail "expected a stream merge, got: $LAST_STDOUT"
expect_files_gone "$dir/base-000001.vmdk" "$dir/base-000002.vmdk"
read_descriptor "$dir/base.vmdk" >"$TEST_TMP/stream-descriptor.after"
diff <(grep -v '^CID=' "$TEST_TMP/stream-descriptor.before") <(grep -v '^CID=' "$TEST_TMP/stream-descriptor.after") ||
    fail "expected the base's descriptor to keep every line but CID after a stream merge"
cmp -s "$TEST_TMP/stream-descriptor.before" "$TEST_TMP/stream-descriptor.after" &&
    fail "expected the base's CID to change after a stream merge"
grep -qx 'scsi0:0.fileName = "base.vmdk"' "$dir/vm.vmx" || fail "expected vm.vmx to name base.vmdk: $(cat "$dir/vm.vmx")"
expect_disk_equals_raw "$dir/base.vmdk" "$TEST_TMP/stream.raw" "after a stream merge"
expect_encrypt_roundtrip "$dir/base.vmdk" "$TEST_TMP/stream.raw"

# Depth 3 over a twoGbMaxExtentSparse base that spans two extents, with a write across the extent
# boundary in the top.
dir="$TEST_TMP/split"
top=$(make_snapshot_chain "$dir" twoGbMaxExtentSparse 2100M 3)
qemu-io -f vmdk -c "write -P 0x77 $((QEMU_SPLIT_BYTES - 65536)) 131072" "$top" >/dev/null
export_chain_raw "$top" "$TEST_TMP/split.raw"
consolidate_and_check "$top" "$TEST_TMP/split.raw" "$dir/base.vmdk"
rm -f "$TEST_TMP/split.raw"

echo "PASS $TEST_NAME"
