#!/usr/bin/env bash
# Crash safety: encrypt and decrypt are killed with SIGKILL at random moments many times and resumed,
# and the guest data must come back unchanged. Also checks SIGTERM and SIGINT (exit 7, resumable), that an
# unfinished operation blocks the other one with exit 7, and that a running vmcrypt locks the disk
# against another vmcrypt and against QEMU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# SIGKILLs that must land while vmcrypt runs, for each operation and disk.
KILLS_REQUIRED=${VMCRYPT_CRASH_KILLS:-20}
# The random delay before each SIGKILL is 0 to INITIAL_MAX_DELAY_MS milliseconds. When an operation
# finishes before enough kills landed, the next round of that operation uses half the delay.
INITIAL_MAX_DELAY_MS=300
MAX_ROUNDS=6

# Sets STATE to the ddb.vmcrypt.state of DISK ("" for a plaintext disk).
read_state() {
    read_descriptor "$1" >"$TEST_TMP/descriptor"
    STATE=$(vmcrypt_field "$TEST_TMP/descriptor" state)
}

# Checks an unfinished OPERATION on DISK: the other operation is rejected with exit 7 and a message
# naming the command that resumes, nothing is written, and inspect reports the unfinished operation
# with one of STATES.
check_unfinished() {
    local disk=$1 operation=$2 other=$3 states=$4
    local dir
    dir=$(dirname "$disk")
    hash_disk_files "$dir" >"$TEST_TMP/hashes.unfinished"
    expect_exit 7 "$VMCRYPT" "$other" "$disk"
    expect_stderr_contains "vmcrypt $operation"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes.unfinished" "$other of a disk with an unfinished $operation"
    expect_exit 0 "$VMCRYPT" inspect --json "$disk"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    expect_inspect_unfinished "$TEST_TMP/inspect.json" "$operation" "$states"
}

# Runs OPERATION (encrypt or decrypt) on DISK in 1 MiB windows and kills it with SIGKILL after a
# random delay of up to MAX_DELAY_MS milliseconds, again and again, until it finishes by itself or
# KILLS_REQUIRED kills landed. Then runs it to the end. Adds the landed kills to LANDED and the
# started runs to STARTED.
run_with_kills() {
    local disk=$1 operation=$2 max_delay_ms=$3
    # States as the descriptor stores them. inspect reports a disk without a record as "plaintext".
    local other=decrypt unfinished_state=encrypting final_state=encrypted
    local inspect_states="encrypting plaintext encrypted"
    if [[ $operation == decrypt ]]; then
        other=encrypt
        unfinished_state=decrypting
        final_state=""
        inspect_states="decrypting encrypted plaintext"
    fi
    local landed_here=0 delay_ms
    while ((landed_here < KILLS_REQUIRED)); do
        start_vmcrypt_background "$operation" --window-size 1 "$disk"
        STARTED=$((STARTED + 1))
        delay_ms=$((RANDOM % (max_delay_ms + 1)))
        sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
        kill -KILL "$BACKGROUND_PID" 2>/dev/null || true
        wait_vmcrypt_background
        case $BACKGROUND_EXIT in
            0) return 0 ;;
            137) ;;
            *) fail "$operation --window-size 1 $disk (resumed after $landed_here kills) exited with $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")" ;;
        esac
        landed_here=$((landed_here + 1))
        LANDED=$((LANDED + 1))
        read_state "$disk"
        if [[ $STATE == "$final_state" && ! -e $disk.vmcrypt-journal ]]; then
            # The kill landed after the last write (the journal is gone), while vmcrypt was exiting, so
            # the operation is complete and running it again would report the wrong state (exit 3).
            return 0
        fi
        if ! $UNFINISHED_CHECKED; then
            if [[ $STATE == "$unfinished_state" ]]; then
                check_unfinished "$disk" "$operation" "$other" "$unfinished_state"
                UNFINISHED_CHECKED=true
            fi
        fi
    done

    # When no random kill left the unfinished state behind, kill once as soon as the journal exists.
    # The descriptor can then still have the state from before the operation, or already the final one.
    if ! $UNFINISHED_CHECKED; then
        if ! kill_when_journal_appears "$disk.vmcrypt-journal" "$operation" --window-size 1 "$disk"; then
            return 0
        fi
        check_unfinished "$disk" "$operation" "$other" "$inspect_states"
        UNFINISHED_CHECKED=true
    fi
    expect_exit 0 "$VMCRYPT" "$operation" --window-size 1 "$disk"
}

# Encrypts and decrypts DISK with kills until KILLS_REQUIRED kills landed in each operation, then
# checks the guest data against RAW.
crash_cycle() {
    local disk=$1 raw=$2 label=$3
    local operation round
    local -A landed=([encrypt]=0 [decrypt]=0) started=([encrypt]=0 [decrypt]=0) checked=([encrypt]=false [decrypt]=false)
    local -A delay=([encrypt]=$INITIAL_MAX_DELAY_MS [decrypt]=$INITIAL_MAX_DELAY_MS)
    for round in $(seq 1 "$MAX_ROUNDS"); do
        for operation in encrypt decrypt; do
            LANDED=0
            STARTED=0
            UNFINISHED_CHECKED=${checked[$operation]}
            if ((landed[$operation] >= KILLS_REQUIRED)); then
                expect_exit 0 "$VMCRYPT" "$operation" "$disk"
                continue
            fi
            run_with_kills "$disk" "$operation" "${delay[$operation]}"
            landed[$operation]=$((landed[$operation] + LANDED))
            started[$operation]=$((started[$operation] + STARTED))
            checked[$operation]=$UNFINISHED_CHECKED
            if ((landed[$operation] < KILLS_REQUIRED)); then
                delay[$operation]=$((delay[$operation] / 2 > 5 ? delay[$operation] / 2 : 5))
            fi
            read_state "$disk"
            local expected_state=encrypted
            [[ $operation == decrypt ]] && expected_state=""
            [[ $STATE == "$expected_state" ]] ||
                fail "expected state \"$expected_state\" after the resumed $operation finished, the descriptor says \"$STATE\""
            [[ ! -e $disk.vmcrypt-journal ]] ||
                fail "expected no journal after the resumed $operation finished, found $disk.vmcrypt-journal"
        done
        expect_same_as_raw "$disk" "$raw" "after round $round of killed and resumed encrypt and decrypt"
        if ((landed[encrypt] >= KILLS_REQUIRED && landed[decrypt] >= KILLS_REQUIRED)); then
            break
        fi
    done
    echo "$TEST_NAME: $label: SIGKILL landed mid-run ${landed[encrypt]} times in ${started[encrypt]} encrypt runs and ${landed[decrypt]} times in ${started[decrypt]} decrypt runs"
    for operation in encrypt decrypt; do
        if ((landed[$operation] < KILLS_REQUIRED)); then
            fail "$label: only ${landed[$operation]} SIGKILLs landed while $operation ran, $KILLS_REQUIRED required; vmcrypt finishes too fast for the delays, so use a bigger disk"
        fi
        ${checked[$operation]} ||
            note "$label: no kill left an unfinished $operation state behind, so the exit 7 check of the other operation did not run"
    done
    expect_qemu_check_clean "$disk" "after the crash cycles"
}

# Sends SIGNAL to OPERATION on DISK while its journal exists and checks exit 7, then resumes it.
# Before the signal, checks that another vmcrypt and a read-write qemu-io cannot open the disk.
interrupt_and_resume() {
    local disk=$1 operation=$2 signal=$3
    for _ in 1 2 3 4 5; do
        start_vmcrypt_background "$operation" --window-size 1 "$disk"
        while [[ ! -e $disk.vmcrypt-journal ]] && process_running "$BACKGROUND_PID"; do
            sleep 0.002
        done

        local second_code=0 qemu_code=0
        "$VMCRYPT" "$operation" "$disk" >/dev/null 2>"$TEST_TMP/second.stderr" || second_code=$?
        qemu-io -f vmdk -c 'read 0 512' "$disk" >"$TEST_TMP/qemu-io-during.out" 2>&1 || qemu_code=$?
        local still_running=false
        process_running "$BACKGROUND_PID" && still_running=true
        kill "-$signal" "$BACKGROUND_PID" 2>/dev/null || true
        wait_vmcrypt_background
        if ! $still_running || [[ $BACKGROUND_EXIT == 0 ]]; then
            # vmcrypt finished before the checks and the signal: undo and try again.
            if [[ $BACKGROUND_EXIT != 0 ]]; then
                fail "$operation $disk exited with $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
            fi
            if [[ $operation == encrypt ]]; then
                expect_exit 0 "$VMCRYPT" decrypt "$disk"
            else
                expect_exit 0 "$VMCRYPT" encrypt "$disk"
            fi
            continue
        fi

        [[ $second_code == 5 ]] ||
            fail "expected a second vmcrypt $operation to exit 5 (disk in use) while the first runs, got $second_code: $(cat "$TEST_TMP/second.stderr")"
        if [[ $qemu_code == 0 ]] || ! grep -q 'lock' "$TEST_TMP/qemu-io-during.out"; then
            fail "expected qemu-io to fail on a lock while vmcrypt $operation rewrites the disk, exit code $qemu_code: $(cat "$TEST_TMP/qemu-io-during.out")"
        fi
        [[ $BACKGROUND_EXIT == 7 ]] ||
            fail "expected exit 7 (interrupted, resumable) from $operation after SIG$signal, got $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
        local lines
        lines=$(awk 'END { print NR }' "$TEST_TMP/background.stderr")
        [[ $lines == 1 ]] ||
            fail "expected one line on stderr from $operation stopped by SIG$signal, got $lines: $(cat "$TEST_TMP/background.stderr")"
        expect_exit 0 "$VMCRYPT" "$operation" "$disk"
        return 0
    done
    fail "vmcrypt $operation finished before SIG$signal could be sent in 5 attempts; use a bigger disk"
}

for subformat in monolithicSparse monolithicFlat; do
    dir="$TEST_TMP/$subformat"
    disk="$dir/disk.vmdk"
    raw="$TEST_TMP/$subformat.raw"
    mkdir "$dir"
    make_random_disk "$subformat" "$disk" 256M 240M "$raw"
    crash_cycle "$disk" "$raw" "$subformat"
done

# A damaged journal. The journal is authenticated with a key derived from the DEK, so after one byte
# of it is flipped a resume must reject it with exit 3, name the journal and write nothing. It may
# also finish the operation with the guest data intact, because a damaged entry can be a torn write.
dir="$TEST_TMP/journal"
saved="$TEST_TMP/journal-saved"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_random_disk monolithicSparse "$disk" 64M 60M "$TEST_TMP/journal.raw"
journal_left=false
for _ in 1 2 3 4 5; do
    if kill_when_journal_appears "$disk.vmcrypt-journal" encrypt --window-size 1 "$disk"; then
        journal_left=true
        break
    fi
    expect_exit 0 "$VMCRYPT" decrypt "$disk"
done
$journal_left || fail "could not stop encrypt while its journal $disk.vmcrypt-journal existed in 5 attempts"
cp -a "$dir" "$saved"

# One offset in each of at most 12 non-zero 512-byte blocks of the journal, spread over the file.
mapfile -t damage_offsets < <("$PYTHON" - "$disk.vmcrypt-journal" <<'PY'
import sys

data = open(sys.argv[1], "rb").read()
blocks = [offset for offset in range(0, len(data), 512) if any(data[offset:offset + 512])]
step = max(1, len(blocks) // 12)
for offset in blocks[::step][:12]:
    print(offset + 100)
PY
)
((${#damage_offsets[@]} > 0)) || fail "test setup: the journal $disk.vmcrypt-journal holds no data"
for offset in "${damage_offsets[@]}"; do
    rm -rf "$dir"
    cp -a "$saved" "$dir"
    "$PYTHON" - "$disk.vmcrypt-journal" "$offset" <<'PY'
import os, sys

fd = os.open(sys.argv[1], os.O_RDWR)
offset = int(sys.argv[2])
os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0x40]), offset)
os.close(fd)
PY
    hash_disk_files "$dir" >"$TEST_TMP/hashes.damaged"
    expect_exit_in "0 3" "$VMCRYPT" encrypt "$disk"
    if [[ $LAST_EXIT == 3 ]]; then
        expect_stderr_contains ".vmcrypt-journal"
        expect_contents_unchanged "$dir" "$TEST_TMP/hashes.damaged" "encrypt with a journal damaged at byte $offset"
    else
        expect_exit 0 "$VMCRYPT" decrypt "$disk"
        expect_same_as_raw "$disk" "$TEST_TMP/journal.raw" "after a resume from a journal damaged at byte $offset and decrypt"
    fi
done

# A truncated journal: inspect calls it damaged, in text and JSON, and does not offer a resume that
# encrypt then rejects.
rm -rf "$dir"
cp -a "$saved" "$dir"
truncate -s 1000 "$disk.vmcrypt-journal"
expect_exit 0 "$VMCRYPT" inspect "$disk"
grep -qF "unfinished: encrypt, journal $disk.vmcrypt-journal is damaged (the file is 1000 bytes" <<<"$LAST_STDOUT" ||
    fail "inspect does not report the truncated journal as damaged: $LAST_STDOUT"
if grep -qF "run the same command to resume" <<<"$LAST_STDOUT"; then
    fail "inspect offers a resume from a truncated journal: $LAST_STDOUT"
fi
expect_exit 0 "$VMCRYPT" --json inspect "$disk"
[[ $("$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["unfinishedOperation"].get("damaged", ""))' \
    <<<"$LAST_STDOUT") == *truncated* ]] ||
    fail "inspect --json does not report the truncated journal as damaged: $LAST_STDOUT"
hash_disk_files "$dir" >"$TEST_TMP/hashes.damaged"
expect_exit 3 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.damaged" "encrypt with a truncated journal"
rm -rf "$saved"

# SIGTERM during encrypt and SIGINT during decrypt of the monolithicSparse disk.
disk="$TEST_TMP/monolithicSparse/disk.vmdk"
interrupt_and_resume "$disk" encrypt TERM
interrupt_and_resume "$disk" decrypt INT
expect_same_as_raw "$disk" "$TEST_TMP/monolithicSparse.raw" "after SIGTERM and SIGINT and resumes"
