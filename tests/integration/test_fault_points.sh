#!/usr/bin/env bash
# Crashes and write failures injected at every named commit point of the rewrite (VMCRYPT_FAULT), for
# encrypt and decrypt: the killed or failed run must leave a disk that the same command finishes, and
# the result must equal the original. A failure before the journal exists must change nothing at all.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$TEST_TMP"
make_random_disk monolithicSparse base.vmdk 24M 20M original.raw

# Fault points hit once per run, and those hit once per window or journal entry (the count picks the
# third).
once_points=(journal-created start-metadata-written finalize-journaled final-metadata-written)
window_points=(journal-body-written window-journaled window-half-written window-synced)

# run_with_fault OPERATION POINT COUNT ACTION EXPECTED_EXIT
run_with_fault() {
    local operation=$1 point=$2 count=$3 action=$4 expected=$5
    local code=0
    # The outer redirection keeps bash's "Killed" report out of the test log.
    { VMCRYPT_FAULT="$point:$count:$action" "$VMCRYPT" "$operation" --quiet --window-size 1 disk.vmdk \
        2>"$TEST_TMP/fault.err"; } 2>/dev/null || code=$?
    [[ $code == "$expected" ]] ||
        fail "$operation with fault $point:$count:$action: expected exit $expected, got $code: $(cat "$TEST_TMP/fault.err")"
    if [[ $action == eio && $point != before-journal-create ]] && ! grep -q "to resume" "$TEST_TMP/fault.err"; then
        fail "$operation with fault $point:$count:eio: the error does not say how to resume: $(cat "$TEST_TMP/fault.err")"
    fi
}

for action in kill eio; do
    expected=137
    [[ $action == eio ]] && expected=6
    for point in "${once_points[@]}" "${window_points[@]}"; do
        count=1
        [[ " ${window_points[*]} " == *" $point "* ]] && count=3

        # encrypt fails at the point, is resumed, then decrypt fails at the same point and is resumed.
        cp base.vmdk disk.vmdk
        run_with_fault encrypt "$point" "$count" "$action" "$expected"
        "$VMCRYPT" encrypt --quiet disk.vmdk 2>"$TEST_TMP/resume.err" ||
            fail "resuming encrypt after $point ($action) failed: $(cat "$TEST_TMP/resume.err")"
        [[ ! -e disk.vmdk.vmcrypt-journal ]] || fail "the journal remained after the resumed encrypt ($point, $action)"
        expect_qemu_check_clean disk.vmdk

        run_with_fault decrypt "$point" "$count" "$action" "$expected"
        "$VMCRYPT" decrypt --quiet disk.vmdk 2>"$TEST_TMP/resume.err" ||
            fail "resuming decrypt after $point ($action) failed: $(cat "$TEST_TMP/resume.err")"
        expect_same_as_raw disk.vmdk original.raw "after faults at $point ($action)"
        cmp -s base.vmdk disk.vmdk || fail "disk.vmdk differs from the original file after faults at $point ($action)"
    done
done

# A failure before the journal exists: every file unchanged, and no KEK left behind in the key store.
cp base.vmdk disk.vmdk
keys_before=$(ls "$VMCRYPT_KEYSTORE" 2>/dev/null | wc -l)
run_with_fault encrypt before-journal-create 1 eio 6
if grep -q "resume" "$TEST_TMP/fault.err"; then
    fail "a failure before the journal existed asks for a resume, but nothing changed: $(cat "$TEST_TMP/fault.err")"
fi
cmp -s base.vmdk disk.vmdk || fail "a failure before the journal existed changed disk.vmdk"
[[ ! -e disk.vmdk.vmcrypt-journal ]] || fail "a failure before the journal existed left a journal"
keys_after=$(ls "$VMCRYPT_KEYSTORE" 2>/dev/null | wc -l)
[[ $keys_before == "$keys_after" ]] ||
    fail "a failed encrypt left a KEK in the key store ($keys_before files before, $keys_after after)"

# An old copy of the journal put back next to a finished disk must be rejected, not resumed: resuming it
# would encrypt finished windows a second time.
cp base.vmdk disk.vmdk
run_with_fault encrypt window-synced 3 eio 6
cp disk.vmdk.vmcrypt-journal old-journal
"$VMCRYPT" encrypt --quiet disk.vmdk
cp old-journal disk.vmdk.vmcrypt-journal
cp disk.vmdk finished.vmdk
expect_exit 3 "$VMCRYPT" encrypt disk.vmdk
expect_stderr_contains "old copy"
cmp -s finished.vmdk disk.vmdk || fail "resuming an old journal copy changed the finished disk"
rm disk.vmdk.vmcrypt-journal
"$VMCRYPT" decrypt --quiet disk.vmdk
expect_same_as_raw disk.vmdk original.raw "after rejecting an old journal copy"

# The same for copies taken at the first journal entry (put back next to the finished, encrypted disk)
# and at the final entry (put back after the disk was decrypted again). A first-entry copy next to a
# plaintext disk is accepted on purpose: that is also what a crash before the start record leaves, and
# resuming it encrypts the plaintext from the start.
for point in start-metadata-written finalize-journaled; do
    cp base.vmdk disk.vmdk
    run_with_fault encrypt "$point" 1 kill 137
    cp disk.vmdk.vmcrypt-journal old-journal
    "$VMCRYPT" encrypt --quiet disk.vmdk
    [[ $point == finalize-journaled ]] && "$VMCRYPT" decrypt --quiet disk.vmdk
    cp old-journal disk.vmdk.vmcrypt-journal
    cp disk.vmdk finished.vmdk
    expect_exit 3 "$VMCRYPT" encrypt disk.vmdk
    cmp -s finished.vmdk disk.vmdk || fail "resuming a journal copy taken at $point changed the disk"
    rm disk.vmdk.vmcrypt-journal
    [[ $point == start-metadata-written ]] && "$VMCRYPT" decrypt --quiet disk.vmdk
    expect_same_as_raw disk.vmdk original.raw "after rejecting a journal copy taken at $point"
done
