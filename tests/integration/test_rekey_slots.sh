#!/usr/bin/env bash
# Key slots: keys add and keys remove round trips (each key of the disk opens it), stable ids, keys
# list and inspect (id, type, KEK id, creation time), the last slot that cannot be removed, an unknown
# id, a key that already has a slot, and slots changed by hand in the descriptor, which the record MAC
# detects (exit 3, nothing written).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FAST_KDF=(--new-pbkdf-memory 8192 --new-pbkdf-iterations 1)
head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"
head -c 32 /dev/urandom >"$TEST_TMP/c.key"
printf 'recovery passphrase\n' >"$TEST_TMP/recovery.txt"

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
make_random_disk monolithicFlat "$disk" 32M 2M "$plain"

# Fails unless keys list --json of the disk shows exactly the slot ids IDS (space-separated, in order).
expect_slot_ids() {
    expect_exit 0 "$VMCRYPT" keys list --json "$disk"
    local ids
    ids=$("$PYTHON" -c 'import json, sys; print(" ".join(str(s["id"]) for s in json.load(sys.stdin)["slots"]))' <<<"$LAST_STDOUT")
    [[ $ids == "$1" ]] || fail "expected key slot ids '$1', keys list shows '$ids': $LAST_STDOUT"
}

# Decrypts a copy of the disk with the key options and compares it with the plaintext.
expect_opens_with() {
    rm -rf "$TEST_TMP/copy"
    cp -a --sparse=always "$dir" "$TEST_TMP/copy"
    expect_exit 0 "$VMCRYPT" decrypt "$@" "$TEST_TMP/copy/disk.vmdk"
    expect_same_as_raw "$TEST_TMP/copy/disk.vmdk" "$plain" "after decrypt with $*"
}

expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$disk"
expect_slot_ids "0"

# Add a key file and a recovery passphrase; every key opens the disk.
expect_exit 0 "$VMCRYPT" keys add --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
expect_exit 0 "$VMCRYPT" keys add --key-file "$TEST_TMP/b.key" --new-passphrase-file "$TEST_TMP/recovery.txt" \
    "${FAST_KDF[@]}" "$disk"
expect_slot_ids "0 1 2"
expect_opens_with --key-file "$TEST_TMP/a.key"
expect_opens_with --key-file "$TEST_TMP/b.key"
expect_opens_with --passphrase-file "$TEST_TMP/recovery.txt"

# keys list and inspect show id, type, KEK id and creation time.
expect_exit 0 "$VMCRYPT" keys list --json "$disk"
"$PYTHON" - "$LAST_STDOUT" <<'PY' || fail "keys list --json does not describe the slots: $LAST_STDOUT"
import json, re, sys
document = json.loads(sys.argv[1])
assert document["schema"] == "vmcrypt-keys/1", document
slots = document["slots"]
assert [s["type"] for s in slots] == ["key-file", "key-file", "passphrase"], slots
assert all(re.fullmatch(r"[0-9a-f]{16}", s["kekId"]) for s in slots[:2]), slots
assert slots[2]["kekId"] is None, slots
assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["created"]) for s in slots), slots
PY
expect_exit 0 "$VMCRYPT" inspect "$disk"
grep -q "key slot 2: passphrase created=" <<<"$LAST_STDOUT" || fail "inspect does not list slot 2 with its creation time: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" inspect --json "$disk"
grep -q '"created"' <<<"$LAST_STDOUT" || fail "inspect --json does not show creation times: $LAST_STDOUT"

# A key that already has a slot is not added twice.
hash_disk_files "$dir" >"$TEST_TMP/hashes.three"
expect_exit 3 "$VMCRYPT" keys add --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
expect_stderr_contains "already opens key slot 1"
expect_exit 3 "$VMCRYPT" keys add --key-file "$TEST_TMP/a.key" --new-passphrase-file "$TEST_TMP/recovery.txt" \
    "${FAST_KDF[@]}" "$disk"
expect_stderr_contains "already opens key slot 2"
# Adding needs a key that opens the disk.
expect_exit 4 "$VMCRYPT" keys add --key-file "$TEST_TMP/c.key" --new-key-file "$TEST_TMP/c.key" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.three" "rejected keys add"

# Remove slot 1 with another key: ids 0 and 2 stay, and the removed key no longer opens the disk.
expect_exit 2 "$VMCRYPT" keys remove --key-file "$TEST_TMP/a.key" --slot 7 "$disk"
expect_stderr_contains "has no key slot 7"
expect_exit 4 "$VMCRYPT" keys remove --key-file "$TEST_TMP/c.key" --slot 1 "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.three" "rejected keys remove"
expect_exit 0 "$VMCRYPT" keys remove --key-file "$TEST_TMP/a.key" --slot 1 "$disk"
expect_slot_ids "0 2"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$disk"
# A new slot takes the lowest free id.
expect_exit 0 "$VMCRYPT" keys add --passphrase-file "$TEST_TMP/recovery.txt" --new-key-file "$TEST_TMP/c.key" "$disk"
expect_slot_ids "0 1 2"
expect_opens_with --key-file "$TEST_TMP/c.key"

# A slot may be removed with its own key, but never the last slot.
expect_exit 0 "$VMCRYPT" keys remove --key-file "$TEST_TMP/a.key" --slot 0 "$disk"
expect_exit 0 "$VMCRYPT" keys remove --key-file "$TEST_TMP/c.key" --slot 1 "$disk"
expect_slot_ids "2"
hash_disk_files "$dir" >"$TEST_TMP/hashes.one"
expect_exit 3 "$VMCRYPT" keys remove --passphrase-file "$TEST_TMP/recovery.txt" --slot 2 "$disk"
expect_stderr_contains "only key slot"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.one" "removal of the last slot"
expect_opens_with --passphrase-file "$TEST_TMP/recovery.txt"

# Slots changed by hand fail the record MAC check (exit 3) before anything is written: a slot copied
# under a free id, a slot removed, a slot moved to another id, and a changed creation time. Start from two
# slots so that a removal leaves a parseable record.
expect_exit 0 "$VMCRYPT" keys add --passphrase-file "$TEST_TMP/recovery.txt" --new-key-file "$TEST_TMP/a.key" "$disk"
cp "$disk" "$TEST_TMP/good.vmdk"
slot_line=$(grep -a '^ddb\.vmcrypt\.keySlot\.0 = ' "$disk")
tamper() {
    local label=$1 script=$2
    cp "$TEST_TMP/good.vmdk" "$disk"
    sed -i -e "$script" "$disk"
    cmp -s "$disk" "$TEST_TMP/good.vmdk" && fail "test setup: the edit '$label' did not change the descriptor"
    hash_disk_files "$dir" >"$TEST_TMP/hashes.tampered"
    expect_exit 3 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$disk"
    expect_stderr_contains "MAC"
    expect_exit 3 "$VMCRYPT" keys add --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
    expect_exit 3 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes.tampered" "commands on a disk with a slot $label"
}
tamper "copied under a free id" "/^ddb\\.vmcrypt\\.keySlot\\.0 = /a ${slot_line/keySlot.0/keySlot.5}"
tamper "removed" "/^ddb\\.vmcrypt\\.keySlot\\.2 = /d"
tamper "moved to another id" "s/^ddb\\.vmcrypt\\.keySlot\\.0 = /ddb.vmcrypt.keySlot.9 = /"
tamper "with a changed creation time" "s/\\(keySlot\\.0 = .*created=\\)[0-9]\\{4\\}/\\11999/"
cp "$TEST_TMP/good.vmdk" "$disk"
expect_opens_with --key-file "$TEST_TMP/a.key"
echo "$TEST_NAME: slot round trips, limits and hand-edited slots checked"
