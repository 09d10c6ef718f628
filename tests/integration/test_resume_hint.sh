#!/usr/bin/env bash
# The "run ... to resume" hints must work when pasted into a shell: they carry the key options that
# unlock the disk and quote a disk path holding a space, a quote and a command substitution.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir="$TEST_TMP/hint"
mkdir "$dir"
disk="$dir/my disk's \$(touch pwned).vmdk"
make_random_disk monolithicFlat "$disk" 64M 32M "$TEST_TMP/plain.raw"
head -c 32 /dev/urandom >"$TEST_TMP/kek.bin"

# Runs the command in the backquotes of the last error line, from a shell in $dir, and expects success.
run_printed_hint() {
    local context=$1 hint
    hint=$(sed -n 's/.*`\(vmcrypt [^`]*\)`.*/\1/p' <<<"$LAST_STDERR")
    [[ -n $hint ]] || fail "expected a backquoted resume command $context, got: $LAST_STDERR"
    (cd "$TEST_TMP" && PATH="$(dirname "$VMCRYPT"):$PATH" bash -c "$hint") >"$TEST_TMP/hint.out" 2>&1 ||
        fail "the printed resume command failed $context: $hint
$(cat "$TEST_TMP/hint.out")"
    [[ ! -e $TEST_TMP/pwned ]] || fail "the printed resume command ran a command substitution: $hint"
}

# An injected I/O error stops encrypt after the journal exists; the hint names --key-file and the path.
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" encrypt --key-file kek.bin \
    --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
[[ $LAST_STDERR == *"--key-file kek.bin"* ]] || fail "expected the resume hint to name --key-file: $LAST_STDERR"
run_printed_hint "after an I/O error during encrypt"
expect_exit 0 "$VMCRYPT" inspect "$disk"
[[ $LAST_STDOUT == *encrypted* ]] || fail "expected the resumed encrypt to finish: $LAST_STDOUT"

# The same for decrypt, and the refusal of another command names the command that finishes the first.
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" decrypt --key-file kek.bin \
    --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
expect_exit 7 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$disk"
[[ $LAST_STDERR == *"vmcrypt decrypt --key-file"* ]] || fail "expected the refusal to name the resume command: $LAST_STDERR"
LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
LAST_STDERR=${LAST_STDERR/finish it first with: /finish it first with: \`}\`
run_printed_hint "after an I/O error during decrypt"
expect_same_as_raw "$disk" "$TEST_TMP/plain.raw" "after the resumed decrypt"

# A deep rekey to a new key: the hint must carry both the key that opens the disk and the new key.
head -c 32 /dev/urandom >"$TEST_TMP/new-kek.bin"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$disk"
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" rekey --deep --key-file kek.bin \
    --new-key-file new-kek.bin --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
[[ $LAST_STDERR == *"--key-file kek.bin --new-key-file new-kek.bin"* ]] ||
    fail "expected the deep rekey hint to name both keys: $LAST_STDERR"
run_printed_hint "after an I/O error during a deep rekey"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/new-kek.bin" "$disk"
expect_same_as_raw "$disk" "$TEST_TMP/plain.raw" "after the resumed deep rekey"

# Another command meets the unfinished operation. An unfinished encrypt is named with the key that
# unlocks the disk, without the --new-* options of a rekey or keys add, which encrypt does not take.
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" encrypt --key-file kek.bin \
    --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
for other in "rekey --key-file kek.bin --new-key-file new-kek.bin" "keys add --key-file kek.bin --new-key-file new-kek.bin"; do
    read -r -a words <<<"$other"
    (cd "$TEST_TMP" && expect_exit 7 "$VMCRYPT" "${words[@]}" "hint/my disk's \$(touch pwned).vmdk")
    LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
    [[ $LAST_STDERR == *"finish it first with: vmcrypt encrypt --key-file kek.bin "* ]] ||
        fail "expected $other to name the encrypt with its key: $LAST_STDERR"
    [[ $LAST_STDERR != *"--new-key-file"* ]] || fail "the encrypt hint from $other names a --new-* option: $LAST_STDERR"
done
LAST_STDERR=${LAST_STDERR/finish it first with: /finish it first with: \`}\`
run_printed_hint "after keys add met an unfinished encrypt"

# While a process holds the disk's lock, another vmcrypt run may be doing the unfinished operation,
# so the other commands report the disk as in use instead of naming a command that would fail the same way.
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" decrypt --key-file kek.bin \
    --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
# One process holds the lock, so that killing it releases the lock (flock(1) would pass it to a child).
"$PYTHON" -c 'import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(30)' "$disk" &
holder=$!
register_background_pid "$holder"
for _ in $(seq 100); do
    "$PYTHON" -c 'import fcntl, sys; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_SH | fcntl.LOCK_NB)' "$disk" 2>/dev/null || break
    sleep 0.05
done
for other in "encrypt --key-file $TEST_TMP/kek.bin" "keys add --key-file $TEST_TMP/kek.bin --new-key-file $TEST_TMP/new-kek.bin"; do
    read -r -a words <<<"$other"
    expect_exit 5 "$VMCRYPT" "${words[@]}" "$disk"
    expect_stderr_contains "the disk is in use (exclusive flock(2) lock"
    expect_stderr_contains "an unfinished decrypt is recorded"
done
kill "$holder"
wait "$holder" 2>/dev/null || true
forget_background_pid "$holder"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/kek.bin" "$disk"
expect_same_as_raw "$disk" "$TEST_TMP/plain.raw" "after the decrypt that a lock held up"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$disk"

# An unfinished deep rekey opens only with a key of its new slots, so decrypt with the old key names
# that key instead of repeating its own --key-file.
(cd "$TEST_TMP" && VMCRYPT_FAULT=window-synced:1:eio expect_exit 6 "$VMCRYPT" rekey --deep --key-file kek.bin \
    --new-key-file new-kek.bin --window-size 4 "hint/my disk's \$(touch pwned).vmdk")
expect_exit 7 "$VMCRYPT" decrypt --key-file "$TEST_TMP/kek.bin" "$disk"
expect_stderr_contains "vmcrypt rekey --deep"
expect_stderr_contains "new key slots"
[[ $LAST_STDERR != *"--key-file $TEST_TMP/kek.bin"* ]] ||
    fail "the deep rekey hint repeats decrypt's old key: $LAST_STDERR"
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/new-kek.bin" "$disk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/new-kek.bin" "$disk"
expect_same_as_raw "$disk" "$TEST_TMP/plain.raw" "after the deep rekey finished with its new key"

# A disk reached through a hard link in another folder: the journal lies next to the path the
# interrupted run used, and the message tells the user to run the command there.
mkdir "$TEST_TMP/link-a" "$TEST_TMP/link-b"
make_random_disk monolithicSparse "$TEST_TMP/link-a/d.vmdk" 16M 8M "$TEST_TMP/link.raw"
ln "$TEST_TMP/link-a/d.vmdk" "$TEST_TMP/link-b/d.vmdk"
expect_exit 6 env VMCRYPT_FAULT=window-synced:1:eio "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" \
    --window-size 1 "$TEST_TMP/link-a/d.vmdk"
expect_exit 3 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$TEST_TMP/link-b/d.vmdk"
expect_stderr_contains "the journal $TEST_TMP/link-b/d.vmdk.vmcrypt-journal is missing"
expect_stderr_contains "run the command on that path, next to which the journal d.vmdk.vmcrypt-journal lies"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$TEST_TMP/link-a/d.vmdk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/kek.bin" "$TEST_TMP/link-b/d.vmdk"
expect_same_as_raw "$TEST_TMP/link-b/d.vmdk" "$TEST_TMP/link.raw" "after finishing the encrypt through the first link"

# A deep rekey that cannot reseal a passphrase slot names a keys remove command with the key options
# that open the disk, and that command works as printed.
printf 'a passphrase for the hint test\n' >"$TEST_TMP/hint-passphrase"
make_random_disk monolithicSparse "$TEST_TMP/link-a/slots.vmdk" 16M 8M "$TEST_TMP/slots.raw"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$TEST_TMP/link-a/slots.vmdk"
expect_exit 0 "$VMCRYPT" keys add --key-file "$TEST_TMP/kek.bin" --new-passphrase-file "$TEST_TMP/hint-passphrase" \
    "$TEST_TMP/link-a/slots.vmdk"
expect_exit 4 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/kek.bin" --new-key-file "$TEST_TMP/new-kek.bin" \
    "$TEST_TMP/link-a/slots.vmdk"
expect_stderr_contains "remove the slot first with: vmcrypt keys remove --slot 1 --key-file $TEST_TMP/kek.bin "
hint=$(sed -n 's/.*remove the slot first with: \(vmcrypt keys remove .*\)$/\1/p' "$TEST_TMP/last.stderr")
(PATH="$(dirname "$VMCRYPT"):$PATH" bash -c "$hint") >"$TEST_TMP/hint.out" 2>&1 ||
    fail "the printed keys remove command failed: $hint
$(cat "$TEST_TMP/hint.out")"
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/kek.bin" --new-key-file "$TEST_TMP/new-kek.bin" \
    "$TEST_TMP/link-a/slots.vmdk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/new-kek.bin" "$TEST_TMP/link-a/slots.vmdk"
expect_same_as_raw "$TEST_TMP/link-a/slots.vmdk" "$TEST_TMP/slots.raw" "after the deep rekey with the slot removed"
