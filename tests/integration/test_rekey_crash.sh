#!/usr/bin/env bash
# Crash safety of a shallow rekey (key file A to key file B). The crashes: a SIGKILL or an I/O error at
# every named fault point, SIGKILLs at random moments, and every possible torn write of the descriptor
# (the first N sectors of the new descriptor written, the rest still old). After each, the disk must
# decrypt with key A or with key B, a key that does not open it gets exit 4, and the decrypted data
# must equal the original. Runs on an embedded descriptor (monolithicSparse) and a descriptor file
# (monolithicFlat).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RANDOM_KILLS=${VMCRYPT_REKEY_RANDOM_KILLS:-40}
head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"
SCENARIOS=0

# Checks the disk in folder CASE_DIR (file disk.vmdk): decrypts copies with key A and with key B. Each
# must exit 0 or 4 and at least one must exit 0, with the original data as the result. CONTEXT names
# the crash for messages.
expect_opens_with_a_or_b() {
    local case_dir=$1 context=$2
    local key opened=""
    for key in a b; do
        rm -rf "$TEST_TMP/check"
        cp -a --sparse=always "$case_dir" "$TEST_TMP/check"
        expect_exit_in "0 4" "$VMCRYPT" decrypt --key-file "$TEST_TMP/$key.key" "$TEST_TMP/check/disk.vmdk"
        if [[ $LAST_EXIT == 0 ]]; then
            expect_same_as_raw "$TEST_TMP/check/disk.vmdk" "$RAW" "after decrypt with key $key, $context"
            [[ ! -e $TEST_TMP/check/disk.vmdk.vmcrypt-journal ]] ||
                fail "decrypt with key $key left a journal behind, $context"
            opened+="$key"
        fi
    done
    [[ -n $opened ]] || fail "neither the old nor the new key opens the disk $context"
    SCENARIOS=$((SCENARIOS + 1))
}

# Copies the encrypted disk into a fresh case folder and prints its path.
new_case() {
    local case_dir="$TEST_TMP/case"
    rm -rf "$case_dir"
    cp -a --sparse=always "$BASE_DIR" "$case_dir"
    echo "$case_dir"
}

rekey_args() {
    echo rekey --quiet --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$1"
}

# Writes every torn version of the journaled descriptor write into copies of CASE_DIR (killed right
# after the journal was created, so the descriptor is still the old one) and checks each.
check_torn_writes() {
    local case_dir=$1 label=$2
    local journal="$case_dir/disk.vmdk.vmcrypt-journal"
    [[ -e $journal ]] || fail "$label: expected a journal after the kill at journal-created"
    local count
    count=$(pending_write "$journal")
    local sectors
    for sectors in $(seq 1 "$count"); do
        local torn="$TEST_TMP/torn"
        rm -rf "$torn"
        cp -a --sparse=always "$case_dir" "$torn"
        pending_write "$journal" "$torn/disk.vmdk" "$sectors"
        expect_opens_with_a_or_b "$torn" "($label, descriptor torn after $sectors of $count sectors)"
    done
    echo "$TEST_NAME: $label: $count torn descriptor writes recovered"
}

for subformat in monolithicSparse monolithicFlat; do
    BASE_DIR="$TEST_TMP/base-$subformat"
    RAW="$TEST_TMP/$subformat.raw"
    mkdir "$BASE_DIR"
    make_random_disk "$subformat" "$BASE_DIR/disk.vmdk" 32M 3M "$RAW"
    expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/a.key" "$BASE_DIR/disk.vmdk"

    # Every named fault point on the path of a shallow rekey, killed and failing with EIO.
    for point in before-journal-create journal-created final-metadata-written; do
        for action in kill eio; do
            case_dir=$(new_case)
            code=0
            { VMCRYPT_FAULT="$point:1:$action" "$VMCRYPT" $(rekey_args "$case_dir/disk.vmdk") \
                2>"$TEST_TMP/fault.err"; } 2>/dev/null || code=$?
            expected=137
            [[ $action == eio ]] && expected=6
            [[ $code == "$expected" ]] ||
                fail "$subformat: rekey with fault $point:$action exited $code, expected $expected: $(cat "$TEST_TMP/fault.err")"
            expect_opens_with_a_or_b "$case_dir" "($subformat, fault $point:$action)"
            if [[ $point == journal-created && $action == kill ]]; then
                # inspect reports the unfinished change and writes nothing.
                hash_disk_files "$case_dir" >"$TEST_TMP/hashes.case"
                expect_exit 0 "$VMCRYPT" inspect --json "$case_dir/disk.vmdk"
                grep -q '"operation": "key-slot change"' <<<"$LAST_STDOUT" ||
                    fail "$subformat: inspect does not report the unfinished key-slot change: $LAST_STDOUT"
                expect_contents_unchanged "$case_dir" "$TEST_TMP/hashes.case" "inspect of an unfinished rekey"
                check_torn_writes "$case_dir" "$subformat"
                # Re-running the rekey finishes it and reports that. Then the old key no longer opens the disk.
                expect_exit 0 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" \
                    "$case_dir/disk.vmdk"
                grep -q "finished an interrupted key-slot change" <<<"$LAST_STDOUT" ||
                    fail "$subformat: re-running the killed rekey does not report finishing it: $LAST_STDOUT"
                expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$case_dir/disk.vmdk"
            fi
        done
    done

    # SIGKILL at random moments. A rekey takes milliseconds, so the delays are short and many kills
    # land before or after it. The test prints how many kills left a journal.
    with_journal=0
    for attempt in $(seq 1 "$RANDOM_KILLS"); do
        case_dir=$(new_case)
        start_vmcrypt_background $(rekey_args "$case_dir/disk.vmdk")
        delay_us=$((RANDOM % 12000))
        sleep "$(printf '0.%06d' "$delay_us")"
        kill -KILL "$BACKGROUND_PID" 2>/dev/null || true
        wait_vmcrypt_background
        [[ $BACKGROUND_EXIT == 0 || $BACKGROUND_EXIT == 137 ]] ||
            fail "$subformat: rekey exited $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
        [[ -e $case_dir/disk.vmdk.vmcrypt-journal ]] && with_journal=$((with_journal + 1))
        expect_opens_with_a_or_b "$case_dir" "($subformat, SIGKILL after ${delay_us} us, attempt $attempt)"
    done
    echo "$TEST_NAME: $subformat: $RANDOM_KILLS random SIGKILLs, $with_journal left an unfinished rekey"
done
echo "$TEST_NAME: $SCENARIOS crash states checked"
