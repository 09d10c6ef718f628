#!/usr/bin/env bash
# Crash matrix for consolidate-snapshots: SIGKILL at every named fault point (several passes of the
# repeated ones) and at random times, on copies of one chain. At each kill the current state must
# still be readable: through the top while the intent file records phase "copy", through the base after the
# commit point. Re-running the command must finish the merge with the base identical to the top's
# raw export taken before, qemu-img check clean, the deltas and the intent file gone and the .vmx
# repointed. Injected I/O errors must leave the same resumable state.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_lib.sh"

# A chain whose deltas store less than its base: merged by commit, into the base.
template="$TEST_TMP/template"
top_name=base-000003.vmdk
make_snapshot_chain "$template" monolithicSparse 64M 3 zeroed_grain=on >/dev/null
echo "scsi0:0.fileName = \"$top_name\"" >"$template/vm.vmx"
expected_raw="$TEST_TMP/expected.raw"
export_chain_raw "$template/$top_name" "$expected_raw"

# A second template with another branch, for the fault points that remove branch files.
branch_template="$TEST_TMP/branch-template"
cp -a "$template" "$branch_template"
(
    cd "$branch_template"
    qemu-img create -q -f vmdk -b base-000001.vmdk -F vmdk other-1.vmdk
    qemu-io -f vmdk -c "write -P 0x99 0 2M" other-1.vmdk >/dev/null
    qemu-img create -q -f vmdk -b other-1.vmdk -F vmdk other-2.vmdk
)

run=0

# Checks that the state a kill left reads as the top did: through the top before the commit point,
# through the base after it. A stream merge makes the top stand alone at the commit point and renames
# it over the base later, so until that rename the top still reads the current state.
expect_state_readable() {
    local dir=$1 context=$2
    local intent="$dir/base.vmdk.vmcrypt-consolidate"
    if [[ -e $intent ]] && grep -q '"phase": "switch"' "$intent" &&
        ! { grep -q '"strategy": "stream"' "$intent" && [[ -e $dir/$top_name ]]; }; then
        expect_same_as_raw "$dir/base.vmdk" "$expected_raw" "$context (after the commit point)"
    elif [[ -e $dir/$top_name ]]; then
        expect_same_as_raw "$dir/$top_name" "$expected_raw" "$context (before the commit point)"
    elif [[ ! -e $intent ]]; then
        # The kill came after the intent file was removed: the merge had finished.
        expect_same_as_raw "$dir/base.vmdk" "$expected_raw" "$context (after the merge finished)"
    else
        fail "$context: a copy-phase intent file exists, but the top $top_name does not: $(ls "$dir")"
    fi
}

# Re-runs the merge and checks the finished result. A run killed before it wrote its intent file
# changed nothing, so the re-run starts afresh instead of resuming.
expect_resumed() {
    local dir=$1 context=$2
    shift 2
    local had_intent=0
    [[ -e $dir/base.vmdk.vmcrypt-consolidate ]] && had_intent=1
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$@" "$dir/$top_name"
    if ((had_intent)) && ! grep -q "resumed" <<<"$LAST_STDOUT"; then
        fail "$context: expected the re-run to say it resumed, got: $LAST_STDOUT"
    fi
    expect_disk_equals_raw "$dir/base.vmdk" "$expected_raw" "$context, resumed"
    expect_files_gone "$dir"/base-0*.vmdk "$dir/base.vmdk.vmcrypt-consolidate" "$dir"/other-*.vmdk
    grep -qx 'scsi0:0.fileName = "base.vmdk"' "$dir/vm.vmx" ||
        fail "$context: expected vm.vmx to name base.vmdk after the resume: $(cat "$dir/vm.vmx")"
}

# Kills the merge at pass COUNT of fault point NAME (ACTION kill or eio), then resumes it.
crash_at() {
    local name=$1 count=$2 action=$3 source=${4:-$template}
    local options=()
    if [[ $source == "$branch_template" ]]; then
        options=(--delete-other-branches)
    fi
    run=$((run + 1))
    local dir="$TEST_TMP/run$run" context="fault $name:$count:$action"
    cp -a "$source" "$dir"

    local code=0
    # The outer redirection keeps bash's "Killed" report out of the test log.
    { VMCRYPT_FAULT="$name:$count:$action" "$VMCRYPT" consolidate-snapshots "${options[@]}" "$dir/$top_name" \
        >"$TEST_TMP/fault.stdout" 2>"$TEST_TMP/fault.stderr"; } 2>/dev/null || code=$?
    local expected=137
    [[ $action == eio ]] && expected=6
    [[ $code == "$expected" ]] ||
        fail "$context: expected exit code $expected (fault point reached), got $code: $(cat "$TEST_TMP/fault.stderr")"
    [[ -e $dir/base.vmdk.vmcrypt-consolidate ]] || fail "$context: expected the intent file to remain after the fault"
    if [[ $action == eio ]] && ! grep -q "to resume" "$TEST_TMP/fault.stderr"; then
        fail "$context: the error does not say how to resume: $(cat "$TEST_TMP/fault.stderr")"
    fi
    expect_state_readable "$dir" "$context"
    expect_resumed "$dir" "$context" "${options[@]}"
    rm -rf "$dir"
}

crash_at consolidate-intent-written 1 kill
for count in 1 2 3 5 8 11 13; do
    crash_at consolidate-run-copied "$count" kill
done
crash_at consolidate-batch-synced 1 kill
crash_at consolidate-copied 1 kill
crash_at consolidate-switch-recorded 1 kill
crash_at consolidate-cid-written 1 kill
crash_at consolidate-vmx-updated 1 kill
for count in 1 2 3; do
    crash_at consolidate-delta-file-removed "$count" kill
done
crash_at consolidate-branch-file-removed 1 kill "$branch_template"
crash_at consolidate-branch-file-removed 2 kill "$branch_template"
crash_at consolidate-run-copied 4 kill "$branch_template"
crash_at consolidate-run-copied 3 eio
crash_at consolidate-delta-file-removed 2 eio

# Runs consolidate-snapshots with the fault FAULT (NAME:COUNT:ACTION) in the folder DIR, expecting the kill.
killed_in_folder() {
    local dir=$1 fault=$2
    shift 2
    local code=0
    { (cd "$dir" && VMCRYPT_FAULT=$fault "$VMCRYPT" consolidate-snapshots "$@" >/dev/null 2>"$TEST_TMP/fault.stderr"); } \
        2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "fault $fault in $dir: expected exit code 137, got $code: $(cat "$TEST_TMP/fault.stderr")"
}

# The same command resumes whatever form the path of the removed top has.
for form in bare dot relative absolute; do
    run=$((run + 1))
    dir="$TEST_TMP/run$run"
    cp -a "$template" "$dir"
    case $form in
    bare) given=$top_name ;;
    dot) given=./$top_name ;;
    relative) given=../run$run/$top_name ;;
    absolute) given=$dir/$top_name ;;
    esac
    killed_in_folder "$dir" consolidate-delta-file-removed:1:kill "$given"
    [[ ! -e $dir/$top_name ]] || fail "path form $form: expected the first removal to take the top $top_name"
    cd "$dir"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$given"
    cd - >/dev/null
    grep -q "resumed" <<<"$LAST_STDOUT" || fail "path form $form: expected the re-run to resume, got: $LAST_STDOUT"
    expect_disk_equals_raw "$dir/base.vmdk" "$expected_raw" "path form $form, resumed"
    expect_files_gone "$dir"/base-0*.vmdk "$dir/base.vmdk.vmcrypt-consolidate"
    rm -rf "$dir"
done

# A base in another folder: the intent file sits next to the base, and the re-run on the top finds it
# after the commit point (new base CID) and after the top was removed.
cross_template="$TEST_TMP/cross-template"
mkdir -p "$cross_template/A" "$cross_template/B"
(
    cd "$cross_template"
    qemu-img create -q -f vmdk A/disk.vmdk 16M
    qemu-io -f vmdk -c "write -P 0x31 0 4M" A/disk.vmdk >/dev/null
    qemu-img create -q -f vmdk -b ../A/disk.vmdk -F vmdk B/mid.vmdk
    qemu-io -f vmdk -c "write -P 0x32 1M 1M" B/mid.vmdk >/dev/null
    qemu-img create -q -f vmdk -b mid.vmdk -F vmdk B/top.vmdk
    qemu-io -f vmdk -c "write -P 0x33 3M 2M" B/top.vmdk >/dev/null
)
cross_raw="$TEST_TMP/cross-expected.raw"
export_chain_raw "$cross_template/B/top.vmdk" "$cross_raw"
for fault in consolidate-run-copied:1:kill consolidate-cid-written:1:kill consolidate-delta-file-removed:1:kill; do
    run=$((run + 1))
    dir="$TEST_TMP/run$run"
    cp -a "$cross_template" "$dir"
    killed_in_folder "$dir" "$fault" "$dir/B/top.vmdk"
    [[ -e $dir/A/disk.vmdk.vmcrypt-consolidate ]] || fail "base in another folder, $fault: expected the intent file"

    # encrypt rejects the base while the merge is unfinished, and inspect reports the merge.
    base_sum=$(sha256sum <"$dir/A/disk.vmdk")
    expect_exit 7 "$VMCRYPT" encrypt "$dir/A/disk.vmdk"
    grep -q "finish the merge first with: vmcrypt consolidate-snapshots $dir/A/disk.vmdk" <<<"$LAST_STDERR" ||
        fail "$fault: expected encrypt to name the command that finishes the merge, got: $LAST_STDERR"
    [[ $(sha256sum <"$dir/A/disk.vmdk") == "$base_sum" ]] || fail "$fault: the rejected encrypt changed the base"
    phase=switch
    [[ $fault == consolidate-run-copied:* ]] && phase=copy
    expect_exit 0 "$VMCRYPT" inspect "$dir/A/disk.vmdk"
    grep -q "^unfinished: consolidate-snapshots merge of $dir/B/top.vmdk into this disk, phase $phase " <<<"$LAST_STDOUT" ||
        fail "$fault: expected inspect to report the unfinished merge in phase $phase, got: $LAST_STDOUT"
    expect_exit 0 "$VMCRYPT" --json inspect "$dir/A/disk.vmdk"
    "$PYTHON" -c 'import json, sys; merge = json.load(sys.stdin)["unfinishedMerge"]; assert merge["phase"] == sys.argv[1], merge' \
        "$phase" <<<"$LAST_STDOUT" || fail "$fault: expected unfinishedMerge.phase $phase in inspect --json: $LAST_STDOUT"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots "$dir/B/top.vmdk"
    grep -q "resumed" <<<"$LAST_STDOUT" ||
        fail "base in another folder, $fault: expected the re-run to resume, got: $LAST_STDOUT"
    expect_disk_equals_raw "$dir/A/disk.vmdk" "$cross_raw" "base in another folder, $fault, resumed"
    expect_files_gone "$dir/B/top.vmdk" "$dir/B/mid.vmdk" "$dir/A/disk.vmdk.vmcrypt-consolidate"
    rm -rf "$dir"
done

# A chain whose top stores more than the disks below it: merged by stream, into the top, which then
# replaces the base file.
stream_template="$TEST_TMP/stream-template"
make_snapshot_chain "$stream_template" monolithicSparse 64M 2 zeroed_grain=on >/dev/null
rm "$stream_template/base-000002.vmdk"
(
    cd "$stream_template"
    qemu-img create -q -f vmdk -o zeroed_grain=on -b base-000001.vmdk -F vmdk base-000002.vmdk
    qemu-img create -q -f vmdk -o zeroed_grain=on -b base-000002.vmdk -F vmdk "$top_name"
    qemu-io -f vmdk -c "write -P 0x51 0 24M" -c "write -z 1M 64k" -c "write -P 0x52 40M 8M" "$top_name" >/dev/null
)
echo "scsi0:0.fileName = \"$top_name\"" >"$stream_template/vm.vmx"
expect_exit 0 "$VMCRYPT" consolidate-snapshots --json --dry-run "$stream_template/$top_name"
grep -q '"strategy": "stream"' <<<"$LAST_STDOUT" || fail "test setup: expected a stream plan, got: $LAST_STDOUT"
expected_raw="$TEST_TMP/stream-expected.raw"
export_chain_raw "$stream_template/$top_name" "$expected_raw"

crash_at consolidate-intent-written 1 kill "$stream_template"
for count in 1 2 3; do
    crash_at consolidate-run-copied "$count" kill "$stream_template"
done
for point in consolidate-batch-synced consolidate-copied consolidate-switch-recorded consolidate-cid-written \
    consolidate-top-renamed consolidate-vmx-updated; do
    crash_at "$point" 1 kill "$stream_template"
done
crash_at consolidate-delta-file-removed 2 kill "$stream_template"
crash_at consolidate-top-renamed 1 eio "$stream_template"

# SIGKILL at random times while a larger chain is merged (each delta stores 48 MiB, so a merge takes
# about 0.3 s on ext4), then a second kill during the resumed run.
big="$TEST_TMP/big-template"
mkdir -p "$big"
(
    cd "$big"
    qemu-img create -q -f vmdk base.vmdk 256M
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk base-000001.vmdk
    qemu-io -f vmdk -c "write -P 0x41 0 48M" base-000001.vmdk >/dev/null
    qemu-img create -q -f vmdk -b base-000001.vmdk -F vmdk base-000002.vmdk
    qemu-io -f vmdk -c "write -P 0x42 32M 48M" base-000002.vmdk >/dev/null
    qemu-img create -q -f vmdk -b base-000002.vmdk -F vmdk base-000003.vmdk
    qemu-io -f vmdk -c "write -z 40M 8M" -c "write -P 0x43 100M 48M" base-000003.vmdk >/dev/null
    echo "scsi0:0.fileName = \"$top_name\"" >vm.vmx
)
expected_raw="$TEST_TMP/big-expected.raw"
export_chain_raw "$big/$top_name" "$expected_raw"
for attempt in $(seq 1 8); do
    run=$((run + 1))
    dir="$TEST_TMP/run$run"
    cp -a "$big" "$dir"
    killed=0
    phases=""
    delays="$((RANDOM % 150)) $((RANDOM % 150))"
    for delay in $delays; do
        if [[ ! -e $dir/$top_name && ! -e $dir/base.vmdk.vmcrypt-consolidate ]]; then
            break  # the first kill came after the merge had finished
        fi
        start_vmcrypt_background consolidate-snapshots "$dir/$top_name"
        sleep "$(printf '0.%03d' "$delay")"
        kill -KILL "$BACKGROUND_PID" 2>/dev/null || true
        wait_vmcrypt_background
        if [[ $BACKGROUND_EXIT == 137 ]]; then
            killed=$((killed + 1))
            phases+=" $(sed -n 's/.*"phase": "\([a-z]*\)".*/\1/p' "$dir/base.vmdk.vmcrypt-consolidate" 2>/dev/null || true)"
            expect_state_readable "$dir" "random kill $attempt after ${delay} ms"
        elif [[ $BACKGROUND_EXIT != 0 ]]; then
            fail "random kill $attempt: vmcrypt exited with $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
        fi
    done
    if [[ -e $dir/$top_name || -e $dir/base.vmdk.vmcrypt-consolidate ]]; then
        expect_resumed "$dir" "random kill $attempt"
    else
        expect_disk_equals_raw "$dir/base.vmdk" "$expected_raw" "random kill $attempt (finished before the kill)"
    fi
    note "random kill $attempt: $killed of 2 kills hit a running merge (delays in ms: $delays; intent phases after the kills:${phases:- none})"
    rm -rf "$dir"
done

# A base that an older vmcrypt encrypted during an unfinished merge: a deep rekey rejects it and names
# decrypt, which stays allowed because it leads back to a base that the merge can finish.
dir="$TEST_TMP/encrypted-base"
mkdir -p "$dir"
qemu-img create -q -f vmdk "$dir/disk.vmdk" 16M
expect_exit 0 "$VMCRYPT" encrypt "$dir/disk.vmdk"
echo '{}' >"$dir/disk.vmdk.vmcrypt-consolidate"
expect_exit 7 "$VMCRYPT" rekey --deep "$dir/disk.vmdk"
expect_stderr_contains "decrypt it with vmcrypt decrypt $dir/disk.vmdk"
expect_exit 0 "$VMCRYPT" inspect "$dir/disk.vmdk"
grep -q "intent file $dir/disk.vmdk.vmcrypt-consolidate is unreadable" <<<"$LAST_STDOUT" ||
    fail "expected inspect to report the unreadable intent file, got: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" decrypt "$dir/disk.vmdk"

echo "PASS $TEST_NAME ($run runs)"
