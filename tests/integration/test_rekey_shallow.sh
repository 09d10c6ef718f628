#!/usr/bin/env bash
# Shallow rekey on every VMDK createType: only the descriptor changes, the new KEK decrypts to the
# original data (qemu-img compare), the old KEK is rejected with exit 4, and --keep-old-slot keeps both.
# Also: the key store default (a new KEK), passphrases, a rekey to the KEK in use (exit 3 and a hint),
# and the cost independence of the disk size (only the descriptor file is written).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FAST_KDF=(--pbkdf-memory 8192 --pbkdf-iterations 1)
head -c 32 /dev/urandom >"$TEST_TMP/a.key"
head -c 32 /dev/urandom >"$TEST_TMP/b.key"
head -c 32 /dev/urandom >"$TEST_TMP/c.key"
printf 'rekey passphrase 1\n' >"$TEST_TMP/pass1.txt"

# Hashes every extent file of DISK except the one holding the descriptor, into FILE.
hash_extents() {
    local disk=$1 out=$2 extent
    : >"$out"
    while read -r extent; do
        if [[ $extent -ef $disk ]]; then
            continue
        fi
        sha256sum "$extent" >>"$out"
    done < <(extent_files "$disk")
}

# Fails unless DISK differs from the copy BEFORE only in its embedded descriptor area (for a file that
# contains its descriptor, monolithicSparse), because a shallow rekey must not touch the grain data.
expect_data_untouched() {
    local disk=$1 before=$2
    "$PYTHON" - "$disk" "$before" <<'PY' || fail "a shallow rekey changed bytes of $1 outside its descriptor"
import struct, sys
path, before = sys.argv[1], sys.argv[2]
a, b = open(path, "rb").read(), open(before, "rb").read()
if len(a) != len(b):
    sys.exit(f"size changed from {len(b)} to {len(a)}")
if a[:4] == b"KDMV":
    start, count = struct.unpack_from("<QQ", a, 28)
    a = a[:start * 512] + a[(start + count) * 512:]
    b = b[:start * 512] + b[(start + count) * 512:]
    if a != b:
        sys.exit("bytes outside the embedded descriptor differ")
PY
}

for subformat in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat vmfs vmfsThin; do
    dir="$TEST_TMP/$subformat"
    disk="$dir/disk.vmdk"
    raw="$TEST_TMP/$subformat.raw"
    mkdir "$dir"
    size=64M
    is_split_subformat "$subformat" && size=2100M
    case $subformat in
        vmfs | vmfsThin)
            make_ext4_disk "$subformat" "$disk" "$size"
            export_raw "$disk" "$raw"
            ;;
        *)
            make_random_disk "$subformat" "$disk" "$size" 6M "$raw"
            # Data near the end too, so split disks have data in their second extent.
            qemu-io -f vmdk -c "write -P 0x6b $(($(numfmt --from=iec "$size") - 65536)) 65536" "$disk" >/dev/null
            export_raw "$disk" "$raw"
            ;;
    esac

    expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$disk"
    hash_extents "$disk" "$TEST_TMP/extents.before"
    cp --sparse=always "$disk" "$TEST_TMP/descriptor-file.before"

    expect_exit 0 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
    [[ ! -e $disk.vmcrypt-journal ]] || fail "$subformat: the rekey left its journal behind"
    hash_extents "$disk" "$TEST_TMP/extents.after"
    cmp -s "$TEST_TMP/extents.before" "$TEST_TMP/extents.after" ||
        fail "$subformat: a shallow rekey changed extent files: $(diff "$TEST_TMP/extents.before" "$TEST_TMP/extents.after")"
    expect_data_untouched "$disk" "$TEST_TMP/descriptor-file.before"
    read_descriptor "$disk" >"$TEST_TMP/descriptor"
    [[ $(vmcrypt_field "$TEST_TMP/descriptor" state) == encrypted ]] || fail "$subformat: state is not encrypted after rekey"
    [[ -z $(vmcrypt_field "$TEST_TMP/descriptor" keySlot.0) ]] || fail "$subformat: the old key slot 0 is still there"
    slot=$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.1)
    [[ $(slot_field "$slot" type) == key-file ]] || fail "$subformat: expected key slot 1 to be a key-file slot, got '$slot'"
    [[ $(slot_field "$slot" created) =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] ||
        fail "$subformat: key slot 1 has no creation time: '$slot'"

    # The old KEK no longer opens the disk, and nothing is written by trying.
    hash_disk_files "$dir" >"$TEST_TMP/hashes.rekeyed"
    expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$disk"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes.rekeyed" "decrypt with the old KEK"

    expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$disk"
    expect_same_as_raw "$disk" "$raw" "($subformat) after rekey and decrypt with the new KEK"
    expect_qemu_check_clean "$disk" "($subformat) after rekey and decrypt"
    rm -rf "$dir" "$raw"
    echo "$TEST_NAME: $subformat: rekeyed and decrypted with the new KEK"
done

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
raw="$TEST_TMP/disk.raw"
mkdir "$dir"
make_random_disk monolithicSparse "$disk" 64M 4M "$raw"

# A rekey to the KEK in use is rejected with a hint, and nothing is written.
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$disk"
hash_disk_files "$dir" >"$TEST_TMP/hashes.encrypted"
expect_exit 3 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/a.key" "$disk"
expect_stderr_contains "would change nothing"
expect_stderr_contains "--new-key-file"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "a rekey to the same KEK"
[[ ! -e $disk.vmcrypt-journal ]] || fail "a rejected no-op rekey left a journal"

# A wrong current key: exit 4, nothing written.
expect_exit 4 "$VMCRYPT" rekey --key-file "$TEST_TMP/c.key" --new-key-file "$TEST_TMP/b.key" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "a rekey with a wrong current key"

# --keep-old-slot: both KEKs open the disk.
expect_exit 0 "$VMCRYPT" rekey --keep-old-slot --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$disk"
cp --sparse=always "$disk" "$TEST_TMP/two-slots.vmdk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/a.key" "$disk"
expect_same_as_raw "$disk" "$raw" "after --keep-old-slot and decrypt with the old KEK"
cp --sparse=always "$TEST_TMP/two-slots.vmdk" "$disk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$disk"
expect_same_as_raw "$disk" "$raw" "after --keep-old-slot and decrypt with the new KEK"

# --keep-old-slot conflicts with --deep.
expect_exit 2 "$VMCRYPT" rekey --deep --keep-old-slot "$disk"

# Key store default: a new KEK in the key store; the old KEK (alone in another key store) is rejected.
expect_exit 0 "$VMCRYPT" encrypt "$disk"
old_kek=$(ls "$VMCRYPT_KEYSTORE")
mkdir -m 0700 "$TEST_TMP/old-store"
cp -p "$VMCRYPT_KEYSTORE/$old_kek" "$TEST_TMP/old-store/"
expect_exit 0 "$VMCRYPT" rekey "$disk"
new_kek=$(ls "$VMCRYPT_KEYSTORE" | grep -vF "$old_kek")
[[ -n $new_kek ]] || fail "a rekey with the key store default created no KEK"
read_descriptor "$disk" >"$TEST_TMP/descriptor"
[[ $(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.1)" kek) == "${new_kek%.kek}" ]] ||
    fail "expected key slot 1 to name the new KEK ${new_kek%.kek}"
expect_exit 4 "$VMCRYPT" decrypt --keystore "$TEST_TMP/old-store" "$disk"
# Rekeying to a KEK of the key store that the disk already uses, by id.
expect_exit 3 "$VMCRYPT" rekey --new-kek-id "${new_kek%.kek}" "$disk"
expect_stderr_contains "would change nothing"

# To a passphrase, and from it to a key file. A wrong passphrase is rejected with exit 4.
expect_exit 0 "$VMCRYPT" rekey --new-passphrase-file "$TEST_TMP/pass1.txt" "${FAST_KDF[@]/#--/--new-}" "$disk"
expect_exit 3 "$VMCRYPT" rekey --passphrase-file "$TEST_TMP/pass1.txt" --new-passphrase-file "$TEST_TMP/pass1.txt" "$disk"
expect_stderr_contains "would change nothing"
expect_exit 4 "$VMCRYPT" rekey --passphrase-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/c.key" "$disk"
expect_exit 0 "$VMCRYPT" rekey --passphrase-file "$TEST_TMP/pass1.txt" --new-key-file "$TEST_TMP/c.key" "$disk"
expect_exit 4 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/pass1.txt" "$disk"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/c.key" "$disk"
expect_same_as_raw "$disk" "$raw" "after rekeys through the key store, a passphrase and a key file"

# A plaintext disk has nothing to rekey.
hash_disk_files "$dir" >"$TEST_TMP/hashes.plain"
expect_exit 3 "$VMCRYPT" rekey --new-key-file "$TEST_TMP/b.key" "$disk"
expect_stderr_contains "not encrypted"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "a rekey of a plaintext disk"

# The rekey cost does not depend on the disk's size: on a 64 GiB sparse disk, as on the small ones
# above, only the descriptor area changes. bench/rekey.sh measures the time.
big="$TEST_TMP/big/disk.vmdk"
mkdir "$TEST_TMP/big"
qemu-img create -f vmdk "$big" 64G >/dev/null
qemu-io -f vmdk -c "write -P 0x11 0 1M" -c "write -P 0x22 63G 1M" "$big" >/dev/null
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/a.key" "$big"
cp --sparse=always "$big" "$TEST_TMP/big.before"
expect_exit 0 "$VMCRYPT" rekey --key-file "$TEST_TMP/a.key" --new-key-file "$TEST_TMP/b.key" "$big"
expect_data_untouched "$big" "$TEST_TMP/big.before"
cmp -s "$big" "$TEST_TMP/big.before" && fail "the rekey of the 64 GiB disk did not change its descriptor"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/b.key" "$big"
qemu-io -f vmdk -c "read -P 0x11 0 1M" -c "read -P 0x22 63G 1M" "$big" | grep -q "Pattern verification failed" &&
    fail "the 64 GiB disk does not read back its patterns after rekey and decrypt"
echo "$TEST_NAME: 64 GiB sparse disk rekeyed with only its descriptor written"
