#!/usr/bin/env bash
# consolidate-snapshots on a qcow2 chain that branches: base <- mid <- top is the branch to keep, and
# other images use its layers: a child of mid with a child of its own, and children of the base that
# name it by an absolute path and by a ../ path. Without --delete-other-branches the merge is rejected
# with every branch image listed and every file unchanged. An image that uses the top is rejected even
# with the option. With it, the kept branch is merged (identical to the top's export, qemu-img check
# clean), the other branches' images are gone, and unrelated files in the folder are byte for byte the
# same. A branch image that QEMU has open stops the merge before its first write. Run for a chain
# merged by commit and one merged by stream.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/consolidate_qcow2_lib.sh"

# Makes the branching chain in folder DIR. With STRATEGY "commit" the base stores most data, with
# "stream" the top does, so that each run takes that strategy.
make_branching_chain() {
    local dir=$1 strategy=$2
    mkdir -p "$dir"
    (
        cd "$dir"
        qemu-img create -q -f qcow2 base.qcow2 64M
        if [[ $strategy == commit ]]; then
            qemu-io -f qcow2 -c "write -P 0x11 0 40M" -c "write -P 0x12 $((64 * 1048576 - 512)) 512" base.qcow2 >/dev/null
        else
            qemu-io -f qcow2 -c "write -P 0x11 0 4M" base.qcow2 >/dev/null
        fi
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
        qemu-io -f qcow2 -c "write -P 0x21 1M 2M" -c "write -z 3M 64k" mid.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
        if [[ $strategy == commit ]]; then
            qemu-io -f qcow2 -c "write -P 0x31 2M 1M" -c "write -P 0x32 $((64 * 1048576 - 1024)) 512" top.qcow2 >/dev/null
        else
            qemu-io -f qcow2 -c "write -P 0x31 8M 30M" -c "write -z 2M 64k" top.qcow2 >/dev/null
        fi

        # The other branches.
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 sibling.qcow2
        qemu-io -f qcow2 -c "write -P 0x41 0 1M" sibling.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b sibling.qcow2 -F qcow2 sibling-child.qcow2
        qemu-io -f qcow2 -c "write -P 0x42 1M 1M" sibling-child.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -u -b "$dir/base.qcow2" -F qcow2 absolute.qcow2 64M
        qemu-img create -q -f qcow2 -u -b "../$(basename "$dir")/base.qcow2" -F qcow2 dotdot.qcow2 64M

        # Unrelated files, which must stay as they are.
        qemu-img create -q -f qcow2 other.qcow2 64M
        qemu-io -f qcow2 -c "write -P 0x51 0 1M" other.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b other.qcow2 -F qcow2 other-overlay.qcow2
        echo "notes about this VM" >notes.txt
    )
}

# Opens the qcow2 IMAGE without its backing file in qemu-io, which holds QEMU's image lock on IMAGE
# alone until release_image (lib.sh).
hold_image_alone() {
    local image=$1 fifo="$TEST_TMP/qemu-io.fifo"
    rm -f "$fifo"
    mkfifo "$fifo"
    qemu-io "json:{\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", \"filename\": \"$image\"}, \"backing\": null}" \
        <"$fifo" >"$TEST_TMP/qemu-io.out" 2>&1 &
    HOLDER_PID=$!
    register_background_pid "$HOLDER_PID"
    exec {HOLDER_FD}>"$fifo"
    for _ in $(seq 1 200); do
        grep -q 'qemu-io>' "$TEST_TMP/qemu-io.out" && return 0
        process_running "$HOLDER_PID" || fail "test setup: qemu-io could not open $image: $(cat "$TEST_TMP/qemu-io.out")"
        sleep 0.05
    done
    fail "test setup: qemu-io did not open $image: $(cat "$TEST_TMP/qemu-io.out")"
}

# Runs the whole case for STRATEGY.
check_branching() {
    local strategy=$1
    local dir="$TEST_TMP/$strategy"
    make_branching_chain "$dir" "$strategy"
    local expected="$TEST_TMP/$strategy-expected.raw"
    qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$expected"
    local branch_files=("$dir/sibling-child.qcow2" "$dir/sibling.qcow2" "$dir/absolute.qcow2" "$dir/dotdot.qcow2")

    # Without the option: rejected (also --dry-run), every branch image listed, every file unchanged.
    hash_folder "$dir" >"$TEST_TMP/before.hash"
    local options
    for options in --dry-run ""; do
        expect_exit 3 "$VMCRYPT" consolidate-snapshots $options "$dir/top.qcow2"
        expect_stderr_contains "other images use this chain as their backing file"
        expect_stderr_contains "$dir/sibling.qcow2 (backing file $dir/mid.qcow2)"
        expect_stderr_contains "$dir/sibling-child.qcow2 (backing file $dir/sibling.qcow2)"
        expect_stderr_contains "$dir/absolute.qcow2 (backing file $dir/base.qcow2)"
        expect_stderr_contains "$dir/dotdot.qcow2 (backing file $dir/base.qcow2)"
        expect_stderr_contains "add --delete-other-branches"
    done
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" ||
        fail "$strategy: files changed after the rejected merge:
$(diff "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || true)"

    # An image that uses the top makes the top the wrong image to name, with or without the option.
    qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 "$dir/top-child.qcow2"
    hash_folder "$dir" >"$TEST_TMP/before.hash"
    expect_exit 3 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/top.qcow2"
    expect_stderr_contains "other images use it as their backing file ($dir/top-child.qcow2), so it is not the newest image of its branch"
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || fail "$strategy: files changed after the rejected merge of a top with a child"
    rm "$dir/top-child.qcow2"

    # The plan lists the files of the other branches, children first, and changes nothing.
    hash_folder "$dir" >"$TEST_TMP/before.hash"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots --dry-run --delete-other-branches "$dir/top.qcow2"
    grep -qF "strategy: $strategy" <<<"$LAST_STDOUT" || fail "$strategy: expected the plan to take $strategy, got: $LAST_STDOUT"
    grep -qF "files of other branches to remove:" <<<"$LAST_STDOUT" || fail "$strategy: the plan lists no branch files: $LAST_STDOUT"
    local file
    for file in "${branch_files[@]}"; do
        grep -qxF "    $file" <<<"$LAST_STDOUT" || fail "$strategy: the plan does not list $file: $LAST_STDOUT"
    done
    local child_line parent_line
    child_line=$(grep -nxF "    $dir/sibling-child.qcow2" <<<"$LAST_STDOUT" | cut -d: -f1)
    parent_line=$(grep -nxF "    $dir/sibling.qcow2" <<<"$LAST_STDOUT" | cut -d: -f1)
    ((child_line < parent_line)) || fail "$strategy: the plan removes sibling.qcow2 before its child: $LAST_STDOUT"
    expect_exit 0 "$VMCRYPT" --json consolidate-snapshots --dry-run --delete-other-branches "$dir/top.qcow2"
    "$PYTHON" -c 'import json, sys; files = json.load(sys.stdin)["removedBranchFiles"]; assert sorted(files) == sorted(sys.argv[1:]), files' \
        "${branch_files[@]}" <<<"$LAST_STDOUT" || fail "$strategy: removedBranchFiles is wrong: $LAST_STDOUT"
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || fail "$strategy: --dry-run changed files"

    # A branch image that QEMU has open is reported before the first write, and nothing changes.
    hold_image_alone "$dir/sibling-child.qcow2"
    expect_exit 5 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/top.qcow2"
    expect_stderr_contains "$dir/sibling-child.qcow2"
    release_image
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || fail "$strategy: the merge rejected for a branch image in use changed files"
    [[ -z $(find "$dir" -name '*.vmcrypt-consolidate-qcow2') ]] || fail "$strategy: an intent file was left in $dir"

    # With the option: the branch merged, the other branches gone, the unrelated files unchanged.
    (cd "$dir" && sha256sum other.qcow2 other-overlay.qcow2 notes.txt) >"$TEST_TMP/unrelated.hash"
    expect_exit 0 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/top.qcow2"
    grep -qF "removed from other branches:" <<<"$LAST_STDOUT" || fail "$strategy: the output lists no removed branch files: $LAST_STDOUT"
    expect_qcow2_equals_raw "$dir/base.qcow2" "$expected" "($strategy, after merging one branch)"
    expect_qcow2_check_clean "$dir/base.qcow2" "($strategy, after merging one branch)"
    for file in "${branch_files[@]}" "$dir/mid.qcow2" "$dir/top.qcow2" "$dir/base.qcow2.vmcrypt-consolidate-qcow2"; do
        [[ ! -e $file ]] || fail "$strategy: $file is still there after the merge: $(ls "$dir")"
    done
    (cd "$dir" && sha256sum --quiet -c "$TEST_TMP/unrelated.hash") || fail "$strategy: an unrelated file changed"
    local left
    left=$(cd "$dir" && ls | tr '\n' ' ')
    [[ $left == "base.qcow2 notes.txt other-overlay.qcow2 other.qcow2 " ]] || fail "$strategy: unexpected files left: $left"
}

check_branching commit
check_branching stream

# A merge started with --delete-other-branches and killed in phase copy. The re-run without the option
# removes only the branch images the intent lists. An image that appeared since may hold new data, so
# it is rejected (exit 3, named, every file unchanged) until the option is given again. An image that
# appeared on the top is rejected even then, with advice that works once it is gone.
check_resume_with_new_images() {
    local dir="$TEST_TMP/resume"
    make_branching_chain "$dir" commit
    local expected="$TEST_TMP/resume-expected.raw"
    qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$expected"
    local code=0
    { VMCRYPT_FAULT=qcow2-merge-data-written:1:kill "$VMCRYPT" consolidate-snapshots --delete-other-branches \
        "$dir/top.qcow2" >/dev/null 2>&1; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "resume: expected exit code 137 (fault point reached), got $code"
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$dir/newvm.qcow2"
    qemu-io -f qcow2 -c "write -P 0x77 0 1M" "$dir/newvm.qcow2" >/dev/null

    hash_folder "$dir" >"$TEST_TMP/before.hash"
    expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/top.qcow2"
    expect_stderr_contains "appeared after this merge began"
    expect_stderr_contains "$dir/newvm.qcow2 (backing file $dir/base.qcow2)"
    expect_stderr_contains "run \`vmcrypt consolidate-snapshots --delete-other-branches $dir/base.qcow2\`"
    hash_folder "$dir" >"$TEST_TMP/after.hash"
    cmp -s "$TEST_TMP/before.hash" "$TEST_TMP/after.hash" || fail "resume: the refused re-run changed files"

    # A new child of the top: the advice names one command, which works once the child is gone.
    qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 "$dir/newtop.qcow2"
    expect_exit 3 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/top.qcow2"
    expect_stderr_contains "$dir/newtop.qcow2 (backing file $dir/top.qcow2)"
    [[ $(grep -o 'vmcrypt consolidate-snapshots [^`]*' <<<"$LAST_STDERR") == "vmcrypt consolidate-snapshots $dir/base.qcow2" ]] ||
        fail "resume: the advice for a new child of the top is not one command: $LAST_STDERR"
    rm "$dir/newtop.qcow2"

    expect_exit 0 "$VMCRYPT" consolidate-snapshots --delete-other-branches "$dir/base.qcow2"
    expect_qcow2_equals_raw "$dir/base.qcow2" "$expected" "(resume, after the re-run with the option)"
    expect_qcow2_check_clean "$dir/base.qcow2" "(resume, after the re-run with the option)"
    local left
    left=$(cd "$dir" && ls | tr '\n' ' ')
    [[ $left == "base.qcow2 notes.txt other-overlay.qcow2 other.qcow2 " ]] || fail "resume: unexpected files left: $left"
}
check_resume_with_new_images
