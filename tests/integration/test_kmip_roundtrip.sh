#!/usr/bin/env bash
# KEKs from a real KMS: a PyKMIP server on 127.0.0.1 creates, activates and hands out the KEK of an
# ext4 VMDK. Encrypt then decrypt gives the original data back (qemu-img compare), and the key slot
# names provider and key. The KEK is in no file. An existing key is used only while it is Active, and a
# disk whose key was revoked still decrypts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/kmip_lib.sh"

kmip_make_certs
port=$(free_port)
kmip_start_server kms "$port" "$KMIP_DIR/keys.db"
config="$TEST_TMP/kms.json"
kmip_write_config "$config" corp-kms client1 "$port"

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
make_small_disk "$disk" "$plain"

# --- encrypt with a new KMS key ------------------------------------------------------------------
expect_exit 0 "$VMCRYPT" encrypt --json --kms-config "$config" --kms-provider corp-kms "$disk"
echo "$LAST_STDOUT" >"$TEST_TMP/encrypt.json"
uid=$(kmip_slot_param "$disk" key)
provider=$(kmip_slot_param "$disk" provider)
[[ -n $uid ]] || fail "expected a kmip key slot with a key= parameter, descriptor: $(read_descriptor "$disk")"
[[ $provider == corp-kms ]] || fail "expected provider=corp-kms in the key slot, got '$provider'"
grep -qF "kmip provider=corp-kms key=$uid" "$TEST_TMP/encrypt.json" ||
    fail "expected encrypt --json to list the key slot 'kmip provider=corp-kms key=$uid', got: $LAST_STDOUT"
expect_qemu_check_clean "$disk" "after encrypt with a KMS key"
marker_absent "$disk"
if [[ -e $VMCRYPT_KEYSTORE && -n $(ls -A "$VMCRYPT_KEYSTORE") ]]; then
    fail "expected encrypt with a KMS key to leave the local key store empty, it holds: $(ls "$VMCRYPT_KEYSTORE")"
fi

# The key on the KMS: Active, AES-256, named vmcrypt-kek-<uuid>, and its bytes in no file of the test.
kmip_python "$port" client1 "$uid" '
key = c.get(uid)
attributes = dict((a.attribute_name.value, a.attribute_value) for a in c.get_attributes(uid, ["State", "Name"])[1])
print(str(attributes["State"]).split(".")[-1], key.cryptographic_length, attributes["Name"].name_value.value)
open("'"$TEST_TMP/kek.bin"'", "wb").write(key.value)
' >"$TEST_TMP/key-info.txt"
read -r state length name <"$TEST_TMP/key-info.txt"
[[ $state == ACTIVE ]] || fail "expected the new KMS key $uid to be Active, PyKMIP says $state"
[[ $length == 256 ]] || fail "expected the new KMS key to be AES-256, PyKMIP says $length bits"
[[ $name == vmcrypt-kek-* ]] || fail "expected the new KMS key to be named vmcrypt-kek-<uuid>, got $name"
"$PYTHON" - "$TEST_TMP/kek.bin" "$dir" "$HOME" <<'PY' || fail "the KEK from the KMS was found in a file"
import os, sys
kek = open(sys.argv[1], "rb").read()
assert len(kek) == 32
for root in sys.argv[2:]:
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            for form in (kek, kek.hex().encode(), kek.hex().upper().encode()):
                if form in data:
                    sys.exit(f"{path} contains the KEK")
PY
rm -f "$TEST_TMP/kek.bin"

# --- a username and password credential, the password read from a private file ------------------
# PyKMIP 0.10 accepts the credential without checking it, so this shows that requests carrying it work.
printf 'kms password 1\n' >"$TEST_TMP/kms.password"
chmod 640 "$TEST_TMP/kms.password"
"$PYTHON" - "$config" "$TEST_TMP/credential.json" "$TEST_TMP/kms.password" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["providers"][0].update(username="vmcrypt", passwordFile=sys.argv[3])
json.dump(config, open(sys.argv[2], "w"))
PY
chmod 644 "$TEST_TMP/kms.password"
hash_disk_files "$dir" >"$TEST_TMP/encrypted.hashes"
expect_exit 4 "$VMCRYPT" decrypt --kms-config "$TEST_TMP/credential.json" "$disk"
expect_stderr_contains "every user can read this KMS password file"
expect_contents_unchanged "$dir" "$TEST_TMP/encrypted.hashes" "decrypt with a readable password file"
chmod 640 "$TEST_TMP/kms.password"
expect_exit 0 "$VMCRYPT" inspect "$disk"
[[ $LAST_STDOUT != *"kms password"* ]] || fail "the password showed up in the inspect output"

# --- decrypt through the default configuration path (VMCRYPT_KMS_CONFIG) --------------------------
VMCRYPT_KMS_CONFIG="$TEST_TMP/credential.json" expect_exit 0 "$VMCRYPT" -vv decrypt "$disk"
if grep -q "kms password" "$TEST_TMP/last.stderr" "$TEST_TMP/last.stdout"; then
    fail "the KMS password showed up in the output of decrypt -vv"
fi
expect_same_as_raw "$disk" "$plain" "after decrypt with the KMS key"
expect_qemu_check_clean "$disk" "after decrypt with a KMS key"

# --- a crash after the journal exists: the same command resumes with the same KMS key --------------
creates_before=$(grep -c "Processing operation: Create" "$KMIP_DIR/kms/server.log")
code=0
VMCRYPT_FAULT=journal-created "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp-kms "$disk" \
    >/dev/null 2>&1 &
# Without the redirection bash reports "Killed" for a command ended by SIGKILL.
wait $! 2>/dev/null || code=$?
[[ $code == 137 && -e $disk.vmcrypt-journal ]] ||
    fail "expected encrypt to be killed at journal-created (137) with its journal left, got $code"
expect_exit 0 "$VMCRYPT" encrypt --json --kms-config "$config" --kms-provider corp-kms "$disk"
[[ $(json_value "$TEST_TMP/last.stdout" resumed) == true ]] || fail "expected the rerun to resume: $LAST_STDOUT"
creates_after=$(grep -c "Processing operation: Create" "$KMIP_DIR/kms/server.log")
[[ $creates_after == $((creates_before + 1)) ]] ||
    fail "expected one KMS key for the killed and the resumed encrypt, the KMS saw $((creates_after - creates_before)) Create requests"
expect_exit 0 "$VMCRYPT" decrypt --kms-config "$config" "$disk"
expect_same_as_raw "$disk" "$plain" "after a resumed encrypt and a decrypt with the KMS key"

# --- an existing key: used while Active, rejected with its state named otherwise -------------------
expect_exit 0 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp-kms --kms-key "$uid" "$disk"
[[ $(kmip_slot_param "$disk" key) == "$uid" ]] || fail "expected encrypt --kms-key $uid to seal with key $uid"

# Revoked: Deactivated. The disk still decrypts while the KMS hands out the key, with a warning.
kmip_python "$port" client1 "$uid" 'c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)'
expect_exit 0 "$VMCRYPT" decrypt --kms-config "$config" "$disk"
grep -qi "deactivated" "$TEST_TMP/last.stderr" ||
    fail "expected decrypt with a Deactivated KMS key to warn about its state, stderr: $LAST_STDERR"
expect_same_as_raw "$disk" "$plain" "after decrypt with a Deactivated KMS key"

hash_disk_files "$dir" >"$TEST_TMP/hashes.plain"
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp-kms --kms-key "$uid" "$disk"
expect_stderr_contains "Deactivated"
expect_stderr_contains "not Active"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt with a Deactivated KMS key"

# A Pre-Active key (created, never activated) is rejected the same way.
pre_active=$(kmip_python "$port" client1 "" '
print(c.create(enums.CryptographicAlgorithm.AES, 256, name="pre-active",
               cryptographic_usage_mask=[enums.CryptographicUsageMask.WRAP_KEY, enums.CryptographicUsageMask.UNWRAP_KEY]))')
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp-kms --kms-key "$pre_active" "$disk"
expect_stderr_contains "Pre-Active"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt with a Pre-Active KMS key"

# An unknown provider and a missing configuration are key errors that name the fix.
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider other "$disk"
expect_stderr_contains 'no KMS provider "other"'
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$TEST_TMP/missing.json" --kms-provider corp-kms "$disk"
expect_stderr_contains "KMS configuration not found"
expect_exit 2 "$VMCRYPT" encrypt --kms-key 1 "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "encrypt with a broken KMS setup"
