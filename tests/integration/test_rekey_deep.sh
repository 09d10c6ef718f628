#!/usr/bin/env bash
# Deep rekey: a new DEK, every unit rewritten. Checks, with an AES-XTS implementation independent of
# vmcrypt (python3 cryptography), that every non-zero unit decrypts under the new DEK and under the old
# DEK decrypts to nothing that matches the plaintext, and that all-zero units stay zeros. Then a crash
# matrix: SIGKILL at 21 named fault points and at random moments, each resumed by the same command, with
# the same check after every resume. Also SIGINT and SIGTERM (exit 7), a KEK change at the same time,
# and the commands that a disk in the middle of a deep rekey rejects.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$PYTHON" -c 'import cryptography' 2>/dev/null ||
    fail "python3 module cryptography is missing (Debian package python3-cryptography); the DEK checks need it"

head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"
dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
# 12 MiB of random data and an allocated grain range of zeros, so the zero-unit rule is exercised.
make_random_disk monolithicSparse "$disk" 32M 12M "$plain"
qemu-io -f vmdk -c "write -P 0 13M 1M" -c "write -P 0x7e 15M 512" "$disk" >/dev/null
export_raw "$disk" "$plain"

# Prints the DEK (hex) that KEY_FILE unwraps from the key-file slot of the descriptor text in FILE.
dek_of() {
    "$PYTHON" - "$1" "$2" <<'PY'
import base64, re, sys
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
descriptor, kek = open(sys.argv[1]).read(), open(sys.argv[2], "rb").read()
for slot in re.findall(r'^ddb\.vmcrypt\.keySlot\.\d+ = "([^"]*)"', descriptor, re.M):
    fields = dict(item.split("=", 1) for item in slot.split(";"))
    try:
        print(aes_key_unwrap(kek, base64.b64decode(fields["dek"])).hex())
        sys.exit(0)
    except InvalidUnwrap:
        continue
sys.exit(f"no key slot of {sys.argv[1]} unwraps with {sys.argv[2]}")
PY
}

# Checks every 512-byte unit of the disk against the plaintext: a non-zero unit must decrypt under
# DEK (hex) with tweak = guest sector, and an all-zero one must be stored as zeros. With OLD_DEK, no
# non-zero unit may decrypt to its plaintext under the old DEK.
check_units() {
    local dek=$1 old_dek=${2:-} context=$3
    export_raw "$disk" "$TEST_TMP/cipher.raw"
    "$PYTHON" - "$plain" "$TEST_TMP/cipher.raw" "$dek" "$old_dek" <<'PY' || fail "unit check failed $context (see above)"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
plain_path, cipher_path, dek_hex, old_hex = sys.argv[1:5]
dek, old = bytes.fromhex(dek_hex), bytes.fromhex(old_hex) if old_hex else None
UNIT, ZERO = 512, bytes(512)
plain, cipher = open(plain_path, "rb").read(), open(cipher_path, "rb").read()
def decrypt(key, unit, sector):
    d = Cipher(algorithms.AES(key), modes.XTS(sector.to_bytes(16, "little"))).decryptor()
    return d.update(unit) + d.finalize()
checked = wrong = zero_not_kept = old_matches = 0
for offset in range(0, len(plain), UNIT):
    p, c = plain[offset:offset + UNIT], cipher[offset:offset + UNIT]
    sector = offset // UNIT
    if p == ZERO:
        zero_not_kept += c != ZERO
        continue
    checked += 1
    wrong += decrypt(dek, c, sector) != p
    if old is not None:
        old_matches += decrypt(old, c, sector) == p
if checked == 0:
    sys.exit("no non-zero unit to check")
if wrong or zero_not_kept or old_matches:
    sys.exit(f"of {checked} non-zero units {wrong} do not decrypt under the new DEK and {old_matches} still "
             f"decrypt under the old DEK; {zero_not_kept} zero units are not stored as zeros")
PY
    rm -f "$TEST_TMP/cipher.raw"
}

current_dek() {
    read_descriptor "$disk" >"$TEST_TMP/descriptor"
    dek_of "$TEST_TMP/descriptor" "$1"
}

# A first deep rekey with the same KEK: the key slot keeps its KEK id, the DEK changes.
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$disk"
old_dek=$(current_dek "$TEST_TMP/a.key")
old_kek_id=$(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.0)" kek)
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" "$disk"
new_dek=$(current_dek "$TEST_TMP/a.key")
[[ $new_dek != "$old_dek" ]] || fail "the DEK did not change in a deep rekey"
[[ $(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.0)" kek) == "$old_kek_id" ]] ||
    fail "a deep rekey without new-key options changed the KEK"
[[ $(vmcrypt_field "$TEST_TMP/descriptor" state) == encrypted ]] || fail "state is not encrypted after a deep rekey"
[[ -z $(vmcrypt_field "$TEST_TMP/descriptor" previousDek) ]] || fail "previousDek remained after a deep rekey"
check_units "$new_dek" "$old_dek" "after the first deep rekey"
expect_qemu_check_clean "$disk" "after a deep rekey"

# A deep rekey that also replaces the KEK: afterwards the old KEK is rejected.
old_dek=$new_dek
expect_exit 0 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
new_dek=$(current_dek "$TEST_TMP/b.key")
check_units "$new_dek" "$old_dek" "after a deep rekey to a new KEK"
hash_disk_files "$dir" >"$TEST_TMP/hashes.now"
expect_exit 4 "$VMCRYPT" rekey --deep --key-file "$TEST_TMP/a.key" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.now" "a deep rekey with the old KEK"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$disk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$disk"
expect_same_as_raw "$disk" "$plain" "after two deep rekeys and decrypt"

# The crash matrix: each run is killed at the COUNT-th pass through a fault point, then the same
# command resumes it. About 13 MiB of data in 1 MiB windows gives 14 windows.
kill_points=(before-journal-create:1 journal-created:1 start-metadata-written:1 journal-body-written:1
    journal-body-written:3 journal-body-written:7 window-journaled:1 window-journaled:2 window-journaled:5
    window-journaled:10 window-journaled:14 window-half-written:1 window-half-written:4
    window-half-written:9 window-half-written:13 window-synced:1 window-synced:6 window-synced:12
    window-synced:14 finalize-journaled:1 final-metadata-written:1)
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$disk"
rejections_checked=false
for point in "${kill_points[@]}"; do
    old_dek=$(current_dek "$TEST_TMP/a.key")
    code=0
    { VMCRYPT_FAULT="$point:kill" "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" --window-size 1 \
        "$disk" 2>"$TEST_TMP/fault.err"; } 2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "rekey --deep with fault $point exited $code, expected 137: $(cat "$TEST_TMP/fault.err")"

    if [[ -e $disk.vmcrypt-journal ]] && ! $rejections_checked && [[ $point == window-synced:* ]]; then
        # Mid-rekey: the record state is rekeying, other commands are rejected with exit 7 naming the resume
        # command, and nothing is written.
        hash_disk_files "$dir" >"$TEST_TMP/hashes.mid"
        [[ $(vmcrypt_field <(read_descriptor "$disk") state) == rekeying ]] || fail "the record is not in state rekeying after $point"
        for command in "decrypt --key-file $TEST_TMP/a.key" "encrypt" "rekey --key-file $TEST_TMP/a.key --new-key-file $TEST_TMP/b.key" \
            "keys add --key-file $TEST_TMP/a.key --new-key-file $TEST_TMP/b.key" "keys remove --key-file $TEST_TMP/a.key --slot 0"; do
            # shellcheck disable=SC2086
            expect_exit 7 "$VMCRYPT" $command "$disk"
            expect_stderr_contains "vmcrypt rekey --deep"
        done
        expect_exit 0 "$VMCRYPT" inspect --json "$disk"
        echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
        expect_inspect_unfinished "$TEST_TMP/inspect.json" rekey rekeying
        expect_contents_unchanged "$dir" "$TEST_TMP/hashes.mid" "commands rejected during a deep rekey"
        rejections_checked=true
    fi

    expect_exit 0 "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" --window-size 1 "$disk"
    [[ ! -e $disk.vmcrypt-journal ]] || fail "the journal remained after resuming from $point"
    check_units "$(current_dek "$TEST_TMP/a.key")" "$old_dek" "after a kill at $point and a resume"
done
$rejections_checked || fail "no kill left a deep rekey unfinished, so the rejection checks did not run"
echo "$TEST_NAME: ${#kill_points[@]} kill points resumed"

# A KEK change killed in the middle: the resume needs the new key, and the same command gives it.
old_dek=$(current_dek "$TEST_TMP/a.key")
code=0
{ VMCRYPT_FAULT="window-synced:3:kill" "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" \
    --new-key-file "$TEST_TMP/b.key" --window-size 1 "$disk" 2>/dev/null; } 2>/dev/null || code=$?
[[ $code == 137 ]] || fail "rekey --deep --new-key-file with a fault exited $code"
expect_exit 0 "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" \
    --window-size 1 "$disk"
check_units "$(current_dek "$TEST_TMP/b.key")" "$old_dek" "after a resumed deep rekey to a new KEK"

# A resume given another new key finishes under the key slots that the interrupted run wrote, and warns
# that the other key is not used.
head -c 32 /dev/urandom >"$TEST_TMP/c.key"
head -c 32 /dev/urandom >"$TEST_TMP/d.key"
old_dek=$(current_dek "$TEST_TMP/b.key")
code=0
{ VMCRYPT_FAULT="window-synced:3:kill" "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/b.key" \
    --new-key-file "$TEST_TMP/d.key" --window-size 1 "$disk" 2>/dev/null; } 2>/dev/null || code=$?
[[ $code == 137 ]] || fail "rekey --deep to d.key with a fault exited $code"
"$VMCRYPT" rekey --deep --key-file "$TEST_TMP/d.key" --new-key-file "$TEST_TMP/c.key" "$disk" \
    >/dev/null 2>"$TEST_TMP/resume.err" || fail "the resume given another new key failed: $(cat "$TEST_TMP/resume.err")"
grep -q "c.key is not used: the interrupted deep rekey finishes under the key slots it started with" \
    "$TEST_TMP/resume.err" || fail "the resume did not warn that c.key is not used: $(cat "$TEST_TMP/resume.err")"
check_units "$(current_dek "$TEST_TMP/d.key")" "$old_dek" "after a resume given another new key"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/c.key" "$disk"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$disk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/d.key" "$disk"
expect_same_as_raw "$disk" "$plain" "after the crash matrix and decrypt"

# SIGINT and SIGTERM stop a deep rekey with exit 7, and random SIGKILLs leave a resumable disk. A larger
# disk makes the run long enough to be hit.
big_dir="$TEST_TMP/big"
big="$big_dir/disk.vmdk"
big_plain="$TEST_TMP/big.raw"
mkdir "$big_dir"
make_random_disk monolithicSparse "$big" 128M 120M "$big_plain"
expect_exit 0 "$VMCRYPT" encrypt --quiet --key-file "$TEST_TMP/a.key" "$big"
for signal in INT TERM; do
    stopped=false
    for _ in 1 2 3 4 5; do
        start_vmcrypt_background rekey --deep --key-file "$TEST_TMP/a.key" --window-size 1 "$big"
        while [[ ! -e $big.vmcrypt-journal ]] && process_running "$BACKGROUND_PID"; do
            sleep 0.002
        done
        sleep 0.05
        kill "-$signal" "$BACKGROUND_PID" 2>/dev/null || true
        wait_vmcrypt_background
        if [[ $BACKGROUND_EXIT == 0 ]]; then
            continue
        fi
        [[ $BACKGROUND_EXIT == 7 ]] ||
            fail "expected exit 7 from rekey --deep after SIG$signal, got $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
        grep -q "vmcrypt rekey --deep" "$TEST_TMP/background.stderr" ||
            fail "the SIG$signal message does not name the resume command: $(cat "$TEST_TMP/background.stderr")"
        expect_exit 0 "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" "$big"
        stopped=true
        break
    done
    $stopped || fail "rekey --deep finished before SIG$signal in 5 attempts; use a bigger disk"
done
landed=0
for attempt in $(seq 1 8); do
    start_vmcrypt_background rekey --deep --key-file "$TEST_TMP/a.key" --window-size 1 "$big"
    delay_ms=$((RANDOM % 400))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -KILL "$BACKGROUND_PID" 2>/dev/null || true
    wait_vmcrypt_background
    [[ $BACKGROUND_EXIT == 0 || $BACKGROUND_EXIT == 137 ]] ||
        fail "rekey --deep exited $BACKGROUND_EXIT: $(cat "$TEST_TMP/background.stderr")"
    if [[ -e $big.vmcrypt-journal ]]; then
        landed=$((landed + 1))
        expect_exit 0 "$VMCRYPT" rekey --deep --quiet --key-file "$TEST_TMP/a.key" "$big"
    fi
done
echo "$TEST_NAME: $landed of 8 random SIGKILLs landed mid-rekey"
expect_exit 0 "$VMCRYPT" decrypt --quiet --key-file "$TEST_TMP/a.key" "$big"
expect_same_as_raw "$big" "$big_plain" "after signals and random SIGKILLs during deep rekeys"
