#!/usr/bin/env bash
# A crash in the middle of the descriptor write that starts or ends an encrypt or a decrypt: the first
# N sectors of the new descriptor are on the disk and the rest is still old. Each torn version, for
# every N, must resume with the same command and end with the original data. Runs on an embedded
# descriptor (monolithicSparse) and a descriptor file (monolithicFlat).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

head -c 32 /dev/urandom >"$TEST_TMP/disk.key"
SCENARIOS=0

# Runs COMMAND (encrypt or decrypt) on a copy of START_DIR killed at fault point POINT, then resumes
# every torn version of the pending descriptor write and checks the result against $RAW.
check_torn_writes() {
    local start_dir=$1 command=$2 point=$3
    local killed="$TEST_TMP/killed"
    rm -rf "$killed"
    cp -a --sparse=always "$start_dir" "$killed"
    local code=0
    { VMCRYPT_FAULT="$point:1:kill" "$VMCRYPT" "$command" --quiet --key-file "$TEST_TMP/disk.key" \
        "$killed/disk.vmdk"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$command with a kill at $point: expected exit code 137, got $code"
    local journal="$killed/disk.vmdk.vmcrypt-journal"
    [[ -e $journal ]] || fail "$command killed at $point left no journal"

    local count sectors
    count=$(pending_write "$journal")
    for sectors in $(seq 1 "$count"); do
        local torn="$TEST_TMP/torn"
        rm -rf "$torn"
        cp -a --sparse=always "$killed" "$torn"
        pending_write "$journal" "$torn/disk.vmdk" "$sectors"
        local context="$command torn at $point after $sectors of $count sectors"
        expect_exit 0 "$VMCRYPT" "$command" --quiet --key-file "$TEST_TMP/disk.key" "$torn/disk.vmdk"
        [[ ! -e $torn/disk.vmdk.vmcrypt-journal ]] || fail "the resumed $context left a journal"
        if [[ $command == encrypt ]]; then
            expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/disk.key" "$torn/disk.vmdk"
        fi
        expect_same_as_raw "$torn/disk.vmdk" "$RAW" "after the resumed $context"
        SCENARIOS=$((SCENARIOS + 1))
    done
}

for subformat in monolithicSparse monolithicFlat; do
    RAW="$TEST_TMP/$subformat.raw"
    plain="$TEST_TMP/plain-$subformat"
    encrypted="$TEST_TMP/encrypted-$subformat"
    mkdir "$plain"
    make_random_disk "$subformat" "$plain/disk.vmdk" 8M 1M "$RAW"
    cp -a --sparse=always "$plain" "$encrypted"
    expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/disk.key" "$encrypted/disk.vmdk"

    # journal-created: the start record is pending. finalize-journaled: the final record is pending.
    for point in journal-created finalize-journaled; do
        check_torn_writes "$plain" encrypt "$point"
        check_torn_writes "$encrypted" decrypt "$point"
    done
done

# A journal copy from a finished run is put back next to the disk after the disk was encrypted again
# under a new DEK. It must not pass for a torn write, because replaying its record write would drop the
# only wrapped copy of the new DEK (decrypt's final write) or start over a disk whose data moved on.
RAW="$TEST_TMP/monolithicSparse.raw"
for copy in "decrypt journal-created" "decrypt finalize-journaled" "encrypt journal-created"; do
    read -r command point <<<"$copy"
    stale="$TEST_TMP/stale"
    rm -rf "$stale"
    if [[ $command == decrypt ]]; then
        cp -a --sparse=always "$TEST_TMP/encrypted-monolithicSparse" "$stale"
    else
        cp -a --sparse=always "$TEST_TMP/plain-monolithicSparse" "$stale"
    fi
    code=0
    { VMCRYPT_FAULT="$point:1:kill" "$VMCRYPT" "$command" --quiet --key-file "$TEST_TMP/disk.key" \
        "$stale/disk.vmdk"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$command with a kill at $point: expected exit code 137, got $code"
    mv "$stale/disk.vmdk.vmcrypt-journal" "$TEST_TMP/old-journal"
    rm -rf "$stale"
    cp -a --sparse=always "$TEST_TMP/encrypted-monolithicSparse" "$stale"
    expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/disk.key" "$stale/disk.vmdk"
    expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/disk.key" "$stale/disk.vmdk"
    cp "$TEST_TMP/old-journal" "$stale/disk.vmdk.vmcrypt-journal"
    cp "$stale/disk.vmdk" "$TEST_TMP/before.vmdk"
    expect_exit 3 "$VMCRYPT" "$command" --quiet --key-file "$TEST_TMP/disk.key" "$stale/disk.vmdk"
    expect_stderr_contains "old copy"
    cmp -s "$TEST_TMP/before.vmdk" "$stale/disk.vmdk" ||
        fail "a $command journal copy taken at $point changed the disk encrypted again"
    rm "$stale/disk.vmdk.vmcrypt-journal"
    expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/disk.key" "$stale/disk.vmdk"
    expect_same_as_raw "$stale/disk.vmdk" "$RAW" "after rejecting a $command journal copy taken at $point"
done

echo "$TEST_NAME: $SCENARIOS torn descriptor writes resumed, 3 journal copies rejected"
