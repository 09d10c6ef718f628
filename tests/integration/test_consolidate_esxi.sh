#!/usr/bin/env bash
# consolidate-snapshots on ESXi deltas built by hand from the published layouts
# (build_esxi_delta.py): vmfsSparse (COWD, 512-byte grains as ESX redo logs use) and seSparse (4 KiB
# grains, with zero and unmapped grains), over flat, vmfs and hosted sparse bases. qemu-img reads
# these deltas too, so its raw export of the top, taken before, is the reference. Over a sparse base
# the small grains land in parts of 64 KiB base grains, which must be assembled with zeros.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_lib.sh"

builder="$(dirname "${BASH_SOURCE[0]}")/build_esxi_delta.py"
MiB=1048576
size=$((64 * MiB))

# Makes base.vmdk of SUBFORMAT in DIR, a COWD delta base-000001.vmdk and a seSparse delta
# base-000002.vmdk over it, each writing in grains the base has and has not allocated, across its
# own grain boundaries and at the last sectors.
make_esxi_chain() {
    local dir=$1 subformat=$2
    mkdir -p "$dir"
    local qemu_subformat=$subformat
    [[ $subformat == vmfs ]] && qemu_subformat=monolithicFlat
    qemu-img create -q -f vmdk -o "subformat=$qemu_subformat" "$dir/base.vmdk" 64M
    qemu-io -f vmdk -c "write -P 0x11 0 8M" -c "write -P 0x12 $((size - 65536)) 65536" "$dir/base.vmdk" >/dev/null
    [[ $subformat == vmfs ]] && convert_flat_to_vmfs "$dir/base.vmdk" vmfs
    "$PYTHON" "$builder" cowd "$dir/base.vmdk" "$dir/base-000001.vmdk" \
        --write 0:512:0x21 --write 4096:8192:-1 --write $((20 * MiB + 512)):1536:0x22 \
        --write $((40 * MiB)):$((2 * MiB)):-1 --write $((size - 1024)):512:0x23 ||
        fail "test setup: building the COWD delta failed"
    "$PYTHON" "$builder" sesparse "$dir/base-000001.vmdk" "$dir/base-000002.vmdk" \
        --write 8192:4096:0x31 --write $((30 * MiB)):$MiB:-1 --write $((41 * MiB)):8192:0x32 \
        --zero 0:4096 --zero $((40 * MiB)):65536 --unmap $((20 * MiB)):4096 --write $((size - 4096)):4096:0x33 ||
        fail "test setup: building the seSparse delta failed"
}

for subformat in monolithicFlat vmfs monolithicSparse; do
    dir="$TEST_TMP/$subformat"
    make_esxi_chain "$dir" "$subformat"
    top="$dir/base-000002.vmdk"
    export_chain_raw "$top" "$TEST_TMP/$subformat.raw"

    expect_exit 0 "$VMCRYPT" consolidate-snapshots --json --dry-run "$top"
    echo "$LAST_STDOUT" >"$TEST_TMP/plan.json"
    # COWD data 2107904 bytes, plus 1 MiB and the last 4 KiB grain of seSparse data, minus the COWD data
    # that seSparse zero and unmapped grains hide (512, 1536 and 65536 bytes) or overwrites (512).
    [[ $(json_value "$TEST_TMP/plan.json" bytesToCopy) == 3092480 ]] ||
        fail "$subformat: expected 3092480 bytes to copy in the plan, got: $LAST_STDOUT"
    [[ $(json_value "$TEST_TMP/plan.json" zeroBytes) == $((4096 + 65536 + 4096)) ]] ||
        fail "$subformat: expected the zero and unmapped grains (73728 bytes) in the plan, got: $LAST_STDOUT"

    # encrypt rejects the ESXi delta and the base under it, and the command it names merges them.
    expect_exit 3 "$VMCRYPT" encrypt "$top"
    expect_stderr_contains "merge the chain first with: vmcrypt consolidate-snapshots $top"
    expect_exit 3 "$VMCRYPT" encrypt "$dir/base.vmdk"
    hint=$(sed -n 's/.*merge them first with: //p' <<<"$LAST_STDERR")
    [[ $hint == "vmcrypt consolidate-snapshots "* ]] ||
        fail "$subformat: expected encrypt to name consolidate-snapshots, got: $LAST_STDERR"
    eval "hint_words=($hint)"
    hint_words[0]=$VMCRYPT
    expect_exit 0 "${hint_words[@]}"
    expect_files_gone "$dir/base-000001.vmdk" "$dir/base-000001-delta.vmdk" "$dir/base-000002.vmdk" \
        "$dir/base-000002-sesparse.vmdk"
    expect_disk_equals_raw "$dir/base.vmdk" "$TEST_TMP/$subformat.raw" "after merging ESXi deltas into $subformat"
    expect_encrypt_roundtrip "$dir/base.vmdk" "$TEST_TMP/$subformat.raw"
done

# Crashes while small ESXi grains are assembled into new grains of a sparse base, then a resume.
for fault in consolidate-run-copied:2 consolidate-run-copied:7 consolidate-batch-synced:1 consolidate-copied:1; do
    dir="$TEST_TMP/crash-${fault//[:]/-}"
    make_esxi_chain "$dir" monolithicSparse
    top="$dir/base-000002.vmdk"
    export_chain_raw "$top" "$TEST_TMP/crash.raw"
    code=0
    { VMCRYPT_FAULT="$fault:kill" "$VMCRYPT" consolidate-snapshots "$top" >/dev/null 2>&1; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "fault $fault: expected the kill (exit code 137), got $code"
    expect_same_as_raw "$top" "$TEST_TMP/crash.raw" "after a kill at $fault (the top must read as before)"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$top"
    expect_disk_equals_raw "$dir/base.vmdk" "$TEST_TMP/crash.raw" "after a kill at $fault and a resume"
done

# Damaged or unfinished deltas are rejected and nothing changes.
dir="$TEST_TMP/dirty"
mkdir -p "$dir"
qemu-img create -q -f vmdk -o subformat=monolithicFlat "$dir/base.vmdk" 16M
"$PYTHON" "$builder" sesparse "$dir/base.vmdk" "$dir/base-000001.vmdk" --write 0:4096:0x41 --dirty
save_dir_state "$dir" "$TEST_TMP/dirty.state"
expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/base-000001.vmdk"
expect_stderr_contains "replay_journal"
expect_dir_unchanged "$dir" "$TEST_TMP/dirty.state" "the rejected merge of a dirty seSparse delta"

dir="$TEST_TMP/truncated"
mkdir -p "$dir"
qemu-img create -q -f vmdk -o subformat=monolithicFlat "$dir/base.vmdk" 16M
"$PYTHON" "$builder" cowd "$dir/base.vmdk" "$dir/base-000001.vmdk" --write 0:65536:0x42
truncate -s -4096 "$dir/base-000001-delta.vmdk"
save_dir_state "$dir" "$TEST_TMP/truncated.state"
expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/base-000001.vmdk"
expect_stderr_contains "grain table entry"
expect_dir_unchanged "$dir" "$TEST_TMP/truncated.state" "the rejected merge of a truncated COWD delta"

write_le_integer "$dir/base-000001-delta.vmdk" 0 4 0x12345678
save_dir_state "$dir" "$TEST_TMP/magic.state"
expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/base-000001.vmdk"
expect_stderr_contains 'magic: not "COWD"'
expect_dir_unchanged "$dir" "$TEST_TMP/magic.state" "the rejected merge of a COWD delta with a bad magic"

echo "PASS $TEST_NAME"
