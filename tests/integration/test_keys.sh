#!/usr/bin/env bash
# Key sources of encrypt and decrypt: key files (raw and hex), passphrases from a file, a file
# descriptor and VMCRYPT_PASSPHRASE, two key slots, wrong keys, key store permissions and --kek-id.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Cheap Argon2id costs for most passphrase runs. One run below checks the defaults.
FAST_KDF=(--pbkdf-memory 8192 --pbkdf-iterations 1)
PASSPHRASE='correct horse battery staple 7431'

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
make_small_disk "$disk" "$plain"

# Decrypts DISK with the given key options and checks that the guest data is the plaintext again.
decrypt_and_compare() {
    local context=$1
    shift
    expect_exit 0 "$VMCRYPT" decrypt "$@" "$disk"
    expect_same_as_raw "$disk" "$plain" "after decrypt $context"
}

# Fails unless key slot INDEX of the disk's descriptor has every given FIELD=VALUE. A slot is a list
# of FIELD=VALUE items separated by ";" in any order, for example "type=keystore;kek=<uuid>;...".
expect_key_slot() {
    local index=$1
    shift
    read_descriptor "$disk" >"$TEST_TMP/descriptor"
    local slot item
    slot=$(vmcrypt_field "$TEST_TMP/descriptor" "keySlot.$index")
    for item in "$@"; do
        if [[ ";$slot;" != *";$item;"* ]]; then
            fail "expected ddb.vmcrypt.keySlot.$index to contain $item, got '$slot'"
        fi
    done
}

# Fails if TEXT contains the passphrase or the hex KEK.
expect_no_secret_in() {
    local what=$1 text=$2
    if grep -qF -- "$PASSPHRASE" <<<"$text"; then
        fail "the passphrase appears in $what"
    fi
    if grep -qiF -- "$(cat "$TEST_TMP/kek.hex")" <<<"$text"; then
        fail "the KEK from the key file appears in $what"
    fi
}

head -c 32 /dev/urandom >"$TEST_TMP/kek.bin"
"$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$TEST_TMP/kek.hex"
head -c 32 /dev/urandom >"$TEST_TMP/other-kek.bin"
printf '%s\n' "$PASSPHRASE" >"$TEST_TMP/passphrase.txt"
printf '%s\n' "wrong $PASSPHRASE" >"$TEST_TMP/wrong-passphrase.txt"

# Key file with 32 raw bytes. The independent XTS check unwraps the DEK with the same key file.
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" "$disk"
expect_key_slot 0 type=key-file
export_raw "$disk" "$TEST_TMP/cipher.raw"
verify_xts_sample "$plain" "$TEST_TMP/cipher.raw" "$TEST_TMP/descriptor" "$TEST_TMP/kek.bin"
rm -f "$TEST_TMP/cipher.raw"
if [[ -n $(ls -A "$VMCRYPT_KEYSTORE") ]]; then
    fail "expected encrypt --key-file to leave the key store empty, found: $(ls -A "$VMCRYPT_KEYSTORE")"
fi

# A disk encrypted with a key file cannot be decrypted without it.
hash_disk_files "$dir" >"$TEST_TMP/hashes.encrypted"
expect_exit 4 "$VMCRYPT" decrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt without a key source"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/other-kek.bin" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt with a wrong key file"
decrypt_and_compare "with the raw key file" --key-file "$TEST_TMP/kek.bin"

# Key file with 64 hex digits and a trailing newline. The KEK must not appear in any output or file.
expect_exit 0 "$VMCRYPT" -v encrypt --key-file "$TEST_TMP/kek.hex" "$disk"
expect_no_secret_in "the output of encrypt -v" "$LAST_STDOUT$LAST_STDERR"
expect_key_slot 0 type=key-file
expect_no_secret_in "the descriptor" "$(cat "$TEST_TMP/descriptor")"
export_raw "$disk" "$TEST_TMP/cipher.raw"
verify_xts_sample "$plain" "$TEST_TMP/cipher.raw" "$TEST_TMP/descriptor" "$TEST_TMP/kek.hex"
rm -f "$TEST_TMP/cipher.raw"
decrypt_and_compare "with the hex key file" --key-file "$TEST_TMP/kek.hex"

# Passphrase file. One trailing newline is not part of the passphrase, so VMCRYPT_PASSPHRASE without
# it opens the disk. The passphrase must not appear in any output or file.
expect_exit 0 "$VMCRYPT" -v encrypt --passphrase-file "$TEST_TMP/passphrase.txt" "${FAST_KDF[@]}" "$disk"
expect_no_secret_in "the output of encrypt -v" "$LAST_STDOUT$LAST_STDERR"
expect_key_slot 0 type=passphrase kdf=argon2id m=8192 t=1 p=1
while read -r file; do
    if grep -qaF -- "$PASSPHRASE" "$file"; then
        fail "the passphrase appears in $file"
    fi
done < <(find "$dir" -type f)
hash_disk_files "$dir" >"$TEST_TMP/hashes.encrypted"
expect_exit 4 "$VMCRYPT" decrypt --passphrase-file "$TEST_TMP/wrong-passphrase.txt" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt with a wrong passphrase"
expect_no_secret_in "the error message of a wrong passphrase" "$LAST_STDOUT$LAST_STDERR"
expect_exit 0 env VMCRYPT_PASSPHRASE="$PASSPHRASE" "$VMCRYPT" -v decrypt "$disk"
expect_no_secret_in "the output of decrypt -v" "$LAST_STDOUT$LAST_STDERR"
expect_same_as_raw "$disk" "$plain" "after decrypt with VMCRYPT_PASSPHRASE"

# Passphrase from VMCRYPT_PASSPHRASE, for encrypt and decrypt.
expect_exit 0 env VMCRYPT_PASSPHRASE="$PASSPHRASE" "$VMCRYPT" encrypt "${FAST_KDF[@]}" "$disk"
expect_key_slot 0 type=passphrase
expect_exit 4 env VMCRYPT_PASSPHRASE="wrong $PASSPHRASE" "$VMCRYPT" decrypt "$disk"
expect_exit 0 env VMCRYPT_PASSPHRASE="$PASSPHRASE" "$VMCRYPT" decrypt "$disk"
expect_same_as_raw "$disk" "$plain" "after decrypt with VMCRYPT_PASSPHRASE"

# Passphrase from file descriptor 3, for encrypt and decrypt.
expect_exit 0 "$VMCRYPT" encrypt --passphrase-fd 3 "${FAST_KDF[@]}" "$disk" 3<"$TEST_TMP/passphrase.txt"
expect_key_slot 0 type=passphrase
expect_exit 4 "$VMCRYPT" decrypt --passphrase-fd 3 "$disk" 3<"$TEST_TMP/wrong-passphrase.txt"
decrypt_and_compare "with --passphrase-fd" --passphrase-fd 3 3<"$TEST_TMP/passphrase.txt"

# Default Argon2id costs: 65536 KiB, 3 iterations, 1 lane.
expect_exit 0 "$VMCRYPT" encrypt --passphrase-file "$TEST_TMP/passphrase.txt" "$disk"
expect_key_slot 0 type=passphrase kdf=argon2id m=65536 t=3 p=1
decrypt_and_compare "of the default Argon2id costs" --passphrase-file "$TEST_TMP/passphrase.txt"

# Two key slots, a key file and a passphrase: either one decrypts.
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" \
    --passphrase-file "$TEST_TMP/passphrase.txt" "${FAST_KDF[@]}" "$disk"
read_descriptor "$disk" >"$TEST_TMP/descriptor"
slot_types="$(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.0)" type) $(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.1)" type)"
if [[ $slot_types != "key-file passphrase" && $slot_types != "passphrase key-file" ]]; then
    fail "expected key slots 0 and 1 to be a key-file and a passphrase slot, got: $slot_types"
fi
decrypt_and_compare "of a two-slot disk with the key file" --key-file "$TEST_TMP/kek.bin"
expect_exit 0 "$VMCRYPT" encrypt --key-file "$TEST_TMP/kek.bin" \
    --passphrase-file "$TEST_TMP/passphrase.txt" "${FAST_KDF[@]}" "$disk"
hash_disk_files "$dir" >"$TEST_TMP/hashes.encrypted"
expect_exit 4 "$VMCRYPT" decrypt --key-file "$TEST_TMP/other-kek.bin" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt of a two-slot disk with a wrong key file"
decrypt_and_compare "of a two-slot disk with the passphrase" --passphrase-file "$TEST_TMP/passphrase.txt"

# Default key store: created when missing, folder 0700, <uuid>.kek 0600 with 64 hex digits.
export VMCRYPT_KEYSTORE="$TEST_TMP/new-keystore"
expect_exit 0 "$VMCRYPT" encrypt "$disk"
expect_key_slot 0 type=keystore
mode=$(stat -c %a "$VMCRYPT_KEYSTORE")
[[ $mode == 700 ]] || fail "expected the new key store folder to have mode 700, got $mode"
kek_id=$(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor" keySlot.0)" kek)
kek_file="$VMCRYPT_KEYSTORE/$kek_id.kek"
[[ -f $kek_file ]] || fail "expected the KEK file $kek_file, key store holds: $(ls -A "$VMCRYPT_KEYSTORE")"
mode=$(stat -c %a "$kek_file")
[[ $mode == 600 ]] || fail "expected $kek_file to have mode 600, got $mode"
grep -qxE '[0-9a-fA-F]{64}' "$kek_file" || fail "expected $kek_file to hold 64 hex digits and a newline"
[[ $(wc -l <"$kek_file") == 1 ]] || fail "expected $kek_file to hold exactly one line"

# A key store folder that others can read is rejected, with the chmod command that fixes it.
hash_disk_files "$dir" >"$TEST_TMP/hashes.encrypted"
chmod 0755 "$VMCRYPT_KEYSTORE"
expect_exit 4 "$VMCRYPT" decrypt "$disk"
expect_stderr_contains_any "chmod 700" "chmod 0700"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt with a key store folder of mode 0755"
chmod 0700 "$VMCRYPT_KEYSTORE"

# A KEK file that others can read is rejected, with the chmod command that fixes it.
chmod 0644 "$kek_file"
expect_exit 4 "$VMCRYPT" decrypt "$disk"
expect_stderr_contains_any "chmod 600" "chmod 0600"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.encrypted" "decrypt with a KEK file of mode 0644"
chmod 0600 "$kek_file"
decrypt_and_compare "with the key store"

# Encrypting with a key store folder of mode 0755 is rejected before anything is written.
hash_disk_files "$dir" >"$TEST_TMP/hashes.plain"
chmod 0755 "$VMCRYPT_KEYSTORE"
expect_exit 4 "$VMCRYPT" encrypt "$disk"
expect_stderr_contains_any "chmod 700" "chmod 0700"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt with a key store folder of mode 0755"
chmod 0700 "$VMCRYPT_KEYSTORE"

# --kek-id reuses a KEK of the key store, and an unknown id is a missing key (exit 4).
expect_exit 0 "$VMCRYPT" encrypt --kek-id "$kek_id" "$disk"
expect_key_slot 0 type=keystore "kek=$kek_id"
kek_count=$(find "$VMCRYPT_KEYSTORE" -name '*.kek' | wc -l)
[[ $kek_count == 1 ]] || fail "expected encrypt --kek-id to reuse the KEK, the key store now holds $kek_count KEK files"
decrypt_and_compare "of a disk encrypted with --kek-id"
# UUIDs compare case-insensitively: an upper-case id names the same lower-case KEK file.
expect_exit 0 "$VMCRYPT" encrypt --kek-id "${kek_id^^}" "$disk"
expect_key_slot 0 type=keystore "kek=$kek_id"
decrypt_and_compare "of a disk encrypted with an upper-case --kek-id"
expect_exit 4 "$VMCRYPT" encrypt --kek-id 00000000-0000-4000-8000-000000000000 "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt with an unknown --kek-id"

# No option takes the passphrase itself as a value, because argv is visible to every user in ps.
expect_exit 0 "$VMCRYPT" encrypt --help
passphrase_options=$(grep -oE -- '--passphrase[A-Za-z-]*' <<<"$LAST_STDOUT" | sort -u | tr '\n' ' ')
for option in $passphrase_options; do
    case $option in
        --passphrase | --passphrase-file | --passphrase-fd) ;;
        *) fail "encrypt --help offers $option; only --passphrase (terminal), --passphrase-file and --passphrase-fd may read a passphrase" ;;
    esac
done
expect_exit 2 "$VMCRYPT" encrypt --passphrase="$PASSPHRASE" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt --passphrase=VALUE"
