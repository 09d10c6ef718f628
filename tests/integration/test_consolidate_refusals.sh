#!/usr/bin/env bash
# Chains that consolidate-snapshots must reject before any write: a branching chain without
# --delete-other-branches, a parentCID that differs from the parent's CID, a missing parent, a loop,
# differing capacities, encrypted or locked disks, a .vmx that uses a snapshot the merge would
# remove. Each gets one clear error line, a distinct exit code, and every file of the folder stays
# byte for byte the same. Then the branching chain with the option: the given branch is merged, the
# other branch's files are gone, and nothing else changes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_lib.sh"

# Runs consolidate-snapshots with the arguments and expects exit code CODE, a message containing
# TEXT, and DIR unchanged.
expect_rejected() {
    local dir=$1 code=$2 text=$3
    shift 3
    save_dir_state "$dir" "$TEST_TMP/state.before"
    expect_exit "$code" "$VMCRYPT" consolidate-snapshots "$@"
    expect_stderr_contains "$text"
    expect_dir_unchanged "$dir" "$TEST_TMP/state.before" "the rejected consolidate-snapshots $*"
}

# A branching chain: base <- base-000001 <- base-000002 on one branch, base <- branch-b1 <- branch-b2
# on the other (a revert to the base snapshot, then new snapshots), and an unrelated disk.
dir="$TEST_TMP/branching"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 2)
(
    cd "$dir"
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk branch-b1.vmdk
    qemu-io -f vmdk -c "write -P 0x66 0 1M" branch-b1.vmdk >/dev/null
    qemu-img create -q -f vmdk -b branch-b1.vmdk -F vmdk branch-b2.vmdk
    qemu-io -f vmdk -c "write -P 0x67 1M 1M" branch-b2.vmdk >/dev/null
    qemu-img create -q -f vmdk unrelated.vmdk 16M
    echo "notes" >notes.txt
)
export_chain_raw "$top" "$TEST_TMP/branching.raw"
expect_rejected "$dir" 3 "--delete-other-branches" "$top"
expect_stderr_contains "branch-b1.vmdk -> $dir/branch-b2.vmdk"
expect_stderr_contains "branches off $dir/base.vmdk"
# The base itself has two children, so naming it is ambiguous even with the option.
expect_rejected "$dir" 3 "snapshots that branch" --delete-other-branches "$dir/base.vmdk"

# A .vmx that uses the other branch keeps the option from deleting that branch.
echo 'scsi0:0.fileName = "branch-b2.vmdk"' >"$dir/other.vmx"
expect_rejected "$dir" 3 "would lose its disk" --delete-other-branches "$top"
rm "$dir/other.vmx"

# With the option: this branch is merged, the other one removed, the unrelated files untouched.
hash_disk_files "$dir" | grep -E ' (unrelated\.vmdk|notes\.txt)$' >"$TEST_TMP/untouched.before"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$top"
expect_files_gone "$dir/branch-b1.vmdk" "$dir/branch-b2.vmdk" "$dir/base-000001.vmdk" "$dir/base-000002.vmdk"
hash_disk_files "$dir" | grep -E ' (unrelated\.vmdk|notes\.txt)$' >"$TEST_TMP/untouched.after"
cmp -s "$TEST_TMP/untouched.before" "$TEST_TMP/untouched.after" ||
    fail "expected unrelated.vmdk and notes.txt unchanged: $(diff "$TEST_TMP/untouched.before" "$TEST_TMP/untouched.after")"
[[ $(ls "$dir") == "$(printf 'base.vmdk\nnotes.txt\nunrelated.vmdk')" ]] ||
    fail "expected only base.vmdk, notes.txt and unrelated.vmdk left, got: $(ls "$dir")"
expect_disk_equals_raw "$dir/base.vmdk" "$TEST_TMP/branching.raw" "after merging one branch"

# A file that is no disk at all.
dir="$TEST_TMP/text"
mkdir -p "$dir"
printf 'notes about the VM\n' >"$dir/notes.vmdk"
expect_rejected "$dir" 3 "not a VMDK or qcow2 disk" "$dir/notes.vmdk"

# parentCID of the top differs from its parent's CID.
dir="$TEST_TMP/cid"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 2)
edit_descriptor "$top" '^parentCID=[0-9a-f]{1,8}' 'parentCID=0badc0de'
expect_rejected "$dir" 3 "parentCID: 0badc0de differs from the CID" "$top"

# The middle delta is missing.
dir="$TEST_TMP/missing"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 3)
mv "$dir/base-000002.vmdk" "$TEST_TMP/moved-away.vmdk"
expect_rejected "$dir" 3 'parent "base-000002.vmdk" not found' "$top"

# A loop: base-000001 names base-000002 as its parent, which names base-000001.
dir="$TEST_TMP/loop"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 2)
edit_descriptor "$dir/base-000001.vmdk" '^parentFileNameHint="base.vmdk"' 'parentFileNameHint="base-000002.vmdk"'
expect_rejected "$dir" 3 "loop" "$top"

# A delta whose capacity differs from its parent's.
dir="$TEST_TMP/capacity"
mkdir -p "$dir"
(
    cd "$dir"
    qemu-img create -q -f vmdk base.vmdk 64M
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk small.vmdk 32M
)
expect_rejected "$dir" 3 "capacity" "$dir/small.vmdk"

# Encrypted: VMware's encryptionKeys in a delta, and a vmcrypt record in the base.
dir="$TEST_TMP/vmware-encrypted"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 1)
edit_descriptor "$top" '^(createType=.*)$' '\1\nencryptionKeys="vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/a4e7494f,HMAC%2dSHA%2d256,kIc7z))"'
expect_rejected "$dir" 3 "encrypted by VMware" "$top"

dir="$TEST_TMP/vmcrypt-encrypted"
mkdir -p "$dir"
qemu-img create -q -f vmdk "$dir/base.vmdk" 64M
expect_exit 0 "$VMCRYPT" encrypt "$dir/base.vmdk"
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk base-000001.vmdk)
expect_rejected "$dir" 3 "were made over ciphertext and cannot be merged" "$dir/base-000001.vmdk"

# Locked: QEMU has the top open, a VMware lock folder exists.
dir="$TEST_TMP/locked"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 2)
hold_image_open "$top"
expect_rejected "$dir" 5 "in use" "$top"
release_image
mkdir "$dir/base.vmdk.lck"
expect_rejected "$dir" 5 "lock folder" "$top"
expect_rejected "$dir" 5 "lock folder" --dry-run "$top"
rmdir "$dir/base.vmdk.lck"

# A .vmx in the folder uses a middle snapshot, which the merge would remove.
echo 'scsi0:0.fileName = "base-000001.vmdk"' >"$dir/vm.vmx"
expect_rejected "$dir" 3 "would lose its disk" "$top"
rm "$dir/vm.vmx"

# No snapshots at all, and a file that does not exist.
mkdir "$TEST_TMP/single"
qemu-img create -q -f vmdk "$TEST_TMP/single/disk.vmdk" 16M
expect_rejected "$TEST_TMP/single" 3 "no snapshots" "$TEST_TMP/single/disk.vmdk"
expect_exit 3 "$VMCRYPT" consolidate-snapshots "$TEST_TMP/none.vmdk"
expect_stderr_contains "not found"

# A delta with parentCID but no parentFileNameHint.
dir="$TEST_TMP/no-hint"
top=$(make_snapshot_chain "$dir" monolithicSparse 64M 1)
edit_descriptor "$top" '^parentFileNameHint=.*\n' ''
expect_rejected "$dir" 3 "parentFileNameHint: missing" "$top"

# A snapshot whose descriptor vmcrypt cannot parse (its extent name has an ESC character, which qemu
# accepts) still names its parent: encrypt and consolidate-snapshots reject the parent, inspect lists it.
dir="$TEST_TMP/unparsable-child"
mkdir -p "$dir"
qemu-img create -q -f vmdk "$dir/base.vmdk" 16M
qemu-io -f vmdk -c "write -P 0x71 0 1M" "$dir/base.vmdk" >/dev/null
top=base-000001.vmdk
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$top")
odd_child="$dir/$(printf 'c\033x.vmdk')"
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$(basename "$odd_child")")
save_dir_state "$dir" "$TEST_TMP/state.before"
expect_exit 3 "$VMCRYPT" encrypt "$dir/base.vmdk"
expect_stderr_contains "$dir/c\x1bx.vmdk"  # the message shows the ESC byte escaped
expect_dir_unchanged "$dir" "$TEST_TMP/state.before" "the rejected encrypt under an unparsable snapshot"
expect_exit 0 "$VMCRYPT" --json inspect "$dir/base.vmdk"
"$PYTHON" -c 'import json, sys; assert sys.argv[1] in json.load(sys.stdin)["children"]' "$odd_child" \
    <<<"$LAST_STDOUT" || fail "expected inspect to list $odd_child among the children: $LAST_STDOUT"
rm "$dir/$top"
expect_rejected "$dir" 3 "cannot be read" "$dir/base.vmdk"
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$top")
expect_rejected "$dir" 3 "cannot be read" "$dir/$top"

echo "PASS $TEST_NAME"
