#!/usr/bin/env bash
# Crash matrix for consolidate-snapshots on qcow2: SIGKILL at the named fault points of the chain merge
# (intent, deleting the base's internal snapshot, making its refcounts exact, every step of a batch of
# clusters, new refcount blocks, the switch, removing the overlays), of a merge into a raw base and of
# deleting the internal snapshots of a single image, plus injected I/O errors and kills at random
# times, and kills while a branching chain is merged with --delete-other-branches. At each kill the
# current state must still be readable: through the top before the commit point, through the base
# after it. Re-running the command must finish the job: the base identical to
# the export of the top taken before, qemu-img check without errors or leaks, no snapshots, the
# overlays and the intent file gone. After each kill, inspect of the base, the top and any branch image
# left must report the unfinished merge and how to resume it, in text and JSON. On the branching chain
# it must also change no file.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_qcow2_lib.sh"

# The chain merged by commit: a base with 4 KiB clusters (so a refcount block covers only 8 MiB and the
# merge must add blocks), data in every cluster (so commit copies less than stream), compressed
# clusters and an internal snapshot; two overlays writing about 40 MiB, so that the merge takes two
# batches of 32 MiB.
template="$TEST_TMP/template"
mkdir -p "$template"
(
    cd "$template"
    qemu-img create -q -f raw fill.raw 64M
    qemu-io -f raw -c "write -P 0x10 0 64M" fill.raw >/dev/null
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096 fill.raw base.qcow2
    rm fill.raw
    qemu-io -f qcow2 -c "write -P 0x11 8M 4M" -c "write -P 0x12 $((64 * 1048576 - 512)) 512" base.qcow2 >/dev/null
    qemu-img snapshot -c before-merge base.qcow2
    qemu-io -f qcow2 -c "write -P 0x13 9M 1M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x21 2M 12M" -c "write -z 4M 1M" -c "write -P 0x22 $((64 * 1048576 - 1024)) 512" \
        mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x31 30M 20M" -c "write -z 8M 64k" -c "write -P 0x32 $((10 * 1048576 + 2048)) 2048" \
        -c "write -P 0x33 $((64 * 1048576 - 512)) 512" top.qcow2 >/dev/null
)
expected_raw="$TEST_TMP/expected.raw"
qemu-img convert -f qcow2 -O raw "$template/top.qcow2" "$expected_raw"

# The chain merged by stream: the top stores more than the layers below it, and it has an internal
# snapshot of its own, which the merge deletes.
stream_template="$TEST_TMP/stream-template"
mkdir -p "$stream_template"
(
    cd "$stream_template"
    qemu-img create -q -f qcow2 base.qcow2 64M
    qemu-io -f qcow2 -c "write -P 0x61 0 16M" -c "write -P 0x62 $((64 * 1048576 - 512)) 512" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x63 1M 2M" -c "write -z 5M 1M" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x64 8M 4M" top.qcow2 >/dev/null
    qemu-img snapshot -c in-top top.qcow2
    qemu-io -f qcow2 -c "write -P 0x65 10M 40M" -c "write -P 0x66 $((2 * 1048576 + 4096)) 2048" -c "write -z 12M 64k" \
        top.qcow2 >/dev/null
)
stream_expected="$TEST_TMP/stream-expected.raw"
qemu-img convert -f qcow2 -O raw "$stream_template/top.qcow2" "$stream_expected"

raw_template="$TEST_TMP/raw-template"
mkdir -p "$raw_template"
(
    cd "$raw_template"
    qemu-img create -q -f raw base.raw 64M
    qemu-io -f raw -c "write -P 0x41 0 16M" base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x42 1M 2M" -c "write -z 6M 1M" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x43 2M 64k" -c "write -z 10M 64k" -c "write -P 0x44 20M 1M" top.qcow2 >/dev/null
)
raw_expected="$TEST_TMP/raw-expected.raw"
qemu-img convert -f qcow2 -O raw "$raw_template/top.qcow2" "$raw_expected"

snapshot_template="$TEST_TMP/snapshot-template"
mkdir -p "$snapshot_template"
(
    cd "$snapshot_template"
    qemu-img create -q -f qcow2 image.qcow2 64M
    qemu-io -f qcow2 -c "write -P 0x51 0 8M" image.qcow2 >/dev/null
    qemu-img snapshot -c first image.qcow2
    qemu-io -f qcow2 -c "write -P 0x52 2M 2M" image.qcow2 >/dev/null
    qemu-img snapshot -c second image.qcow2
    qemu-io -f qcow2 -c "write -P 0x53 3M 4M" -c "write -z 20M 1M" image.qcow2 >/dev/null
)
snapshot_expected="$TEST_TMP/snapshot-expected.raw"
qemu-img convert -f qcow2 -O raw "$snapshot_template/image.qcow2" "$snapshot_expected"

run=0

# Fails unless inspect (text and --json) of IMAGE in DIR reports the unfinished merge into BASE that the
# intent file records: its phase and the command that resumes it.
expect_inspect_reports_merge() {
    local dir=$1 image=$2 base=$3 context=$4
    local intent="$dir/$base.vmcrypt-consolidate-qcow2" phase=copy
    grep -q '"phase": "switch"' "$intent" && phase=switch
    expect_exit 0 "$VMCRYPT" inspect "$dir/$image"
    grep -qF "unfinished: consolidate-snapshots merge of $dir/top.qcow2 into $dir/$base (" <<<"$LAST_STDOUT" ||
        fail "$context: inspect of $image does not report the unfinished merge: $LAST_STDOUT"
    grep -qF "phase $phase (intent file $intent); finish it with: vmcrypt consolidate-snapshots $dir/$base" <<<"$LAST_STDOUT" ||
        fail "$context: inspect of $image does not report phase $phase and how to resume: $LAST_STDOUT"
    expect_exit 0 "$VMCRYPT" --json inspect "$dir/$image"
    "$PYTHON" -c '
import json, sys
merge = json.load(sys.stdin)["unfinishedMerge"]
intent, phase, base, top = sys.argv[1:5]
assert merge["intent"] == intent, merge
assert merge["phase"] == phase, merge
assert merge["base"] == base, merge
assert merge["top"] == top, merge
assert merge["command"] == "vmcrypt consolidate-snapshots " + base, merge
' "$intent" "$phase" "$dir/$base" "$dir/top.qcow2" <<<"$LAST_STDOUT" ||
        fail "$context: inspect --json of $image does not report the unfinished merge: $LAST_STDOUT"
}

# Fails unless the files in DIR have the hashes that hash_folder saved in FILE (inspect changes none).
expect_folder_hashes() {
    local dir=$1 file=$2 context=$3
    hash_folder "$dir" >"$TEST_TMP/inspect-after.hash"
    cmp -s "$file" "$TEST_TMP/inspect-after.hash" ||
        fail "$context: inspect changed files:
$(diff "$file" "$TEST_TMP/inspect-after.hash" || true)"
}

# Fails unless the files a kill left read as the original top did. A stream merge makes the top stand
# alone at the commit point and renames it over the base later, so until that rename the top still
# reads the current state.
expect_state_readable() {
    local dir=$1 base=$2 raw=$3 context=$4
    local intent="$dir/$base.vmcrypt-consolidate-qcow2" view
    if [[ -e $intent ]] && grep -q '"phase": "switch"' "$intent" &&
        ! { grep -q '"strategy": "stream"' "$intent" && [[ -e $dir/top.qcow2 ]]; }; then
        view=$dir/$base
    elif [[ -e $dir/top.qcow2 ]]; then
        view=$dir/top.qcow2
    elif [[ ! -e $intent ]]; then
        view=$dir/$base  # the merge had finished
    else
        fail "$context: a copy-phase intent file exists, but the top does not: $(ls "$dir")"
    fi
    if [[ $view == *.raw ]]; then
        cmp -s "$dir/$base" "$raw" || fail "$context: the raw base differs from the top's export"
    else
        expect_qcow2_equals_raw "$view" "$raw" "($context, before the re-run)"
    fi
}

# Kills (or fails, ACTION eio) the command at pass COUNT of fault point NAME on a copy of TEMPLATE,
# whose disk is DISK and whose result is BASE, then re-runs it and checks the result against RAW.
crash_at() {
    local name=$1 count=$2 action=$3 template_dir=$4 disk=$5 base=$6 raw=$7
    run=$((run + 1))
    local dir="$TEST_TMP/run$run" context="fault $name:$count:$action on $(basename "$template_dir")"
    cp -a --sparse=always "$template_dir" "$dir"

    local code=0
    # The outer redirection keeps bash's "Killed" report out of the test log.
    { VMCRYPT_FAULT="$name:$count:$action" "$VMCRYPT" consolidate-snapshots "$dir/$disk" \
        >"$TEST_TMP/fault.stdout" 2>"$TEST_TMP/fault.stderr"; } 2>/dev/null || code=$?
    local expected=137
    [[ $action == eio ]] && expected=6
    [[ $code == "$expected" ]] ||
        fail "$context: expected exit code $expected (fault point reached), got $code: $(cat "$TEST_TMP/fault.stderr")"
    if [[ $action == eio && $disk == top.qcow2 ]] && ! grep -q "to resume" "$TEST_TMP/fault.stderr"; then
        fail "$context: the error does not say how to resume: $(cat "$TEST_TMP/fault.stderr")"
    fi
    if [[ $disk == top.qcow2 ]]; then
        expect_state_readable "$dir" "$base" "$raw" "$context"
        # The branching chain below also checks that inspect changes no file; hashing here too would
        # double this script's time.
        if [[ -e $dir/$base.vmcrypt-consolidate-qcow2 && $base == *.qcow2 ]]; then
            expect_inspect_reports_merge "$dir" "$base" "$base" "$context"
            if [[ -e $dir/top.qcow2 ]]; then
                expect_inspect_reports_merge "$dir" top.qcow2 "$base" "$context"
            fi
        fi
    else
        expect_qcow2_equals_raw "$dir/$base" "$raw" "($context, before the re-run)"
    fi

    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/$disk"
    if [[ $base == *.raw ]]; then
        cmp -s "$dir/$base" "$raw" || fail "$context: after the re-run the raw base differs from the top's export"
    else
        expect_qcow2_equals_raw "$dir/$base" "$raw" "($context, after the re-run)"
        expect_qcow2_check_clean "$dir/$base" "($context, after the re-run)"
        [[ -z $(qemu-img snapshot -l "$dir/$base") ]] || fail "$context: $base still has internal snapshots"
    fi
    [[ ! -e $dir/top.qcow2 && ! -e $dir/mid.qcow2 && ! -e $dir/$base.vmcrypt-consolidate-qcow2 ]] ||
        fail "$context: overlays or the intent file left after the re-run: $(ls "$dir")"
    rm -rf "$dir"
}

chain() { crash_at "$1" "$2" "${3:-kill}" "$template" top.qcow2 base.qcow2 "$expected_raw"; }
chain qcow2-consolidate-intent-written 1
chain qcow2-snapshot-table-dropped 1
chain qcow2-refcounts-lowered 1
chain qcow2-copied-flags-fixed 1
chain qcow2-clusters-allocated 1
chain qcow2-refblock-written 1
chain qcow2-reftable-entry-written 1
chain qcow2-merge-data-written 1
chain qcow2-merge-l2-written 1
chain qcow2-merge-entries-linked 1
chain qcow2-merge-released 1
chain qcow2-merge-data-written 2
chain qcow2-merge-entries-linked 2
chain qcow2-consolidate-copied 1
chain qcow2-consolidate-switch-recorded 1
chain qcow2-consolidate-overlay-removed 1
chain qcow2-consolidate-overlay-removed 2
chain qcow2-merge-data-written 2 eio
chain qcow2-consolidate-overlay-removed 1 eio

streamed() { crash_at "$1" "$2" "${3:-kill}" "$stream_template" top.qcow2 base.qcow2 "$stream_expected"; }
streamed qcow2-snapshot-table-dropped 1
streamed qcow2-copied-flags-fixed 1
streamed qcow2-merge-data-written 1
streamed qcow2-merge-entries-linked 1
streamed qcow2-consolidate-switch-recorded 1
streamed qcow2-consolidate-backing-dropped 1
streamed qcow2-consolidate-top-renamed 1
streamed qcow2-consolidate-overlay-removed 1
streamed qcow2-consolidate-backing-dropped 1 eio

crash_at raw-merge-piece-written 2 kill "$raw_template" top.qcow2 base.raw "$raw_expected"

for point in qcow2-snapshot-table-dropped qcow2-refcounts-lowered qcow2-copied-flags-fixed; do
    crash_at "$point" 1 kill "$snapshot_template" image.qcow2 image.qcow2 "$snapshot_expected"
done

# A chain that branches, merged with --delete-other-branches: the images of the other branches (a child
# of mid with a child of its own, and a child of the base) are removed, children first, before any
# layer changes. At every kill each branch image left must still read as it did before, and the re-run,
# without the option, must remove the rest as the intent file records.
branch_template="$TEST_TMP/branch-template"
mkdir -p "$branch_template"
(
    cd "$branch_template"
    qemu-img create -q -f qcow2 base.qcow2 64M
    qemu-io -f qcow2 -c "write -P 0x71 0 40M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x72 1M 2M" -c "write -z 4M 1M" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x73 2M 1M" -c "write -P 0x74 $((64 * 1048576 - 512)) 512" top.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 sibling.qcow2
    qemu-io -f qcow2 -c "write -P 0x75 0 1M" sibling.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b sibling.qcow2 -F qcow2 sibling-child.qcow2
    qemu-io -f qcow2 -c "write -P 0x76 1M 1M" sibling-child.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 base-child.qcow2
    qemu-io -f qcow2 -c "write -P 0x77 8M 1M" base-child.qcow2 >/dev/null
)
branch_expected="$TEST_TMP/branch-expected.raw"
qemu-img convert -f qcow2 -O raw "$branch_template/top.qcow2" "$branch_expected"
branch_images=(sibling-child.qcow2 sibling.qcow2 base-child.qcow2)
for image in "${branch_images[@]}"; do
    qemu-img convert -f qcow2 -O raw "$branch_template/$image" "$TEST_TMP/branch-$image.raw"
done

crash_branching() {
    local name=$1 count=$2
    run=$((run + 1))
    local dir="$TEST_TMP/run$run" context="fault $name:$count:kill on the branching chain"
    cp -a --sparse=always "$branch_template" "$dir"
    local code=0
    { VMCRYPT_FAULT="$name:$count:kill" "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/top.qcow2" \
        >"$TEST_TMP/fault.stdout" 2>"$TEST_TMP/fault.stderr"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$context: expected exit code 137 (fault point reached), got $code: $(cat "$TEST_TMP/fault.stderr")"
    expect_state_readable "$dir" base.qcow2 "$branch_expected" "$context"

    # Each branch image left must read as before, because its parents stay untouched until it is gone.
    # inspect of it, and of the base, reports the merge that removes it.
    local image
    hash_folder "$dir" >"$TEST_TMP/inspect-before.hash"
    for image in "${branch_images[@]}"; do
        [[ -e $dir/$image ]] || continue
        expect_qcow2_equals_raw "$dir/$image" "$TEST_TMP/branch-$image.raw" "($context, branch image $image left)"
        expect_inspect_reports_merge "$dir" "$image" base.qcow2 "$context"
    done
    expect_inspect_reports_merge "$dir" base.qcow2 base.qcow2 "$context"

    # encrypt of the base must wait for the merge (interrupted: exit 7) and name the command that finishes it.
    expect_exit 7 "$VMCRYPT" encrypt "$dir/base.qcow2"
    [[ $LAST_STDERR == *"consolidate-snapshots"*top.qcow2* ]] ||
        fail "$context: encrypt of the base does not say how to finish the merge: $LAST_STDERR"
    expect_folder_hashes "$dir" "$TEST_TMP/inspect-before.hash" "$context"

    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
    expect_qcow2_equals_raw "$dir/base.qcow2" "$branch_expected" "($context, after the re-run)"
    expect_qcow2_check_clean "$dir/base.qcow2" "($context, after the re-run)"
    local left
    left=$(cd "$dir" && ls | tr '\n' ' ')
    [[ $left == "base.qcow2 " ]] || fail "$context: expected only base.qcow2 after the re-run, got: $left"
    rm -rf "$dir"
}
crash_branching qcow2-consolidate-intent-written 1
crash_branching qcow2-consolidate-branch-file-removed 1
crash_branching qcow2-consolidate-branch-file-removed 2
crash_branching qcow2-consolidate-branch-file-removed 3
crash_branching qcow2-merge-data-written 1
crash_branching qcow2-consolidate-switch-recorded 1
crash_branching qcow2-consolidate-overlay-removed 1

# Kills at chosen times during the chain merge; a merge that finished first is checked the same way.
for delay in 0.02 0.08; do
    run=$((run + 1))
    dir="$TEST_TMP/run$run"
    cp -a --sparse=always "$template" "$dir"
    "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2" >/dev/null 2>&1 &
    pid=$!
    register_background_pid "$pid"
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_background_pid "$pid"
    expect_state_readable "$dir" base.qcow2 "$expected_raw" "kill after $delay s"
    if [[ -e $dir/top.qcow2 || -e $dir/base.qcow2.vmcrypt-consolidate-qcow2 ]]; then
        expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
    else
        note "kill after $delay s: the merge had finished"
    fi
    expect_qcow2_equals_raw "$dir/base.qcow2" "$expected_raw" "(kill after $delay s, after the re-run)"
    expect_qcow2_check_clean "$dir/base.qcow2" "(kill after $delay s, after the re-run)"
    rm -rf "$dir"
done

# A stream merge across folders (base/base.qcow2 <- snap/mid.qcow2 <- snap/top.qcow2). After the top
# has dropped its backing file name, or after it was renamed over the base, nothing but the link file
# in snap/ leads to the intent file. The re-run on snap/top.qcow2 must still finish the merge, and
# while the top exists, inspect must report the merge and encrypt must reject the top.
folders_template="$TEST_TMP/folders-template"
mkdir -p "$folders_template/base" "$folders_template/snap"
(
    cd "$folders_template"
    qemu-img create -q -f qcow2 base/base.qcow2 16M
    qemu-io -f qcow2 -c "write -P 0x81 0 2M" base/base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b ../base/base.qcow2 -F qcow2 snap/mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x82 1M 1M" snap/mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 snap/top.qcow2
    qemu-io -f qcow2 -c "write -P 0x83 1M 12M" snap/top.qcow2 >/dev/null
)
folders_expected="$TEST_TMP/folders-expected.raw"
qemu-img convert -f qcow2 -O raw "$folders_template/snap/top.qcow2" "$folders_expected"

crash_in_folders() {
    local name=$1
    run=$((run + 1))
    local dir="$TEST_TMP/run$run" context="fault $name:1:kill on the chain across folders"
    cp -a --sparse=always "$folders_template" "$dir"
    local code=0
    { VMCRYPT_FAULT="$name:1:kill" "$VMCRYPT" consolidate-snapshots "$dir/snap/top.qcow2" \
        >"$TEST_TMP/fault.stdout" 2>"$TEST_TMP/fault.stderr"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$context: expected exit code 137 (fault point reached), got $code: $(cat "$TEST_TMP/fault.stderr")"
    if [[ -e $dir/snap/top.qcow2 ]]; then
        expect_exit 0 "$VMCRYPT" inspect "$dir/snap/top.qcow2"
        grep -qF "unfinished: consolidate-snapshots merge of $dir/snap/top.qcow2 into $dir/base/base.qcow2" \
            <<<"$LAST_STDOUT" || fail "$context: inspect of the top does not report the merge: $LAST_STDOUT"
        expect_exit 7 "$VMCRYPT" encrypt "$dir/snap/top.qcow2"
    fi
    if [[ $name == qcow2-consolidate-intent-removed ]]; then
        # The merge had finished, so only link files were left, and the re-run names the disk's new path.
        expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/snap/top.qcow2"
        [[ $LAST_STDERR == *"finished already, and the disk is now $dir/base/base.qcow2"* ]] ||
            fail "$context: the re-run does not say where the disk is: $LAST_STDERR"
    else
        expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/snap/top.qcow2"
    fi
    expect_qcow2_equals_raw "$dir/base/base.qcow2" "$folders_expected" "($context, after the re-run)"
    expect_qcow2_check_clean "$dir/base/base.qcow2" "($context, after the re-run)"
    local left
    left=$(cd "$dir" && find . -type f | sort | tr '\n' ' ')
    [[ $left == "./base/base.qcow2 " ]] || fail "$context: expected only base/base.qcow2 after the re-run, got: $left"
    rm -rf "$dir"
}
for point in qcow2-consolidate-backing-dropped qcow2-consolidate-top-renamed qcow2-consolidate-overlay-removed \
    qcow2-consolidate-intent-removed; do
    crash_in_folders "$point"
done
