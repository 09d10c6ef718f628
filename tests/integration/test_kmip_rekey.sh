#!/usr/bin/env bash
# Rekey with KEKs from a real KMS (PyKMIP on 127.0.0.1). A shallow rekey seals the DEK under a new KMS
# key and drops the old slot. A key store disk moves to the KMS the same way, and a deep rekey reseals
# the new DEK under the same KMS key. After each step decrypt must give the original data back.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/kmip_lib.sh"

kmip_make_certs
port=$(free_port)
kmip_start_server kms "$port" "$KMIP_DIR/keys.db"
config="$TEST_TMP/kms.json"
kmip_write_config "$config" corp client1 "$port"
export VMCRYPT_KMS_CONFIG="$config"

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
make_small_disk "$disk" "$plain"

# Fails unless the disk has exactly one key slot and it is a kmip slot; prints its key UID.
only_kmip_slot() {
    read_descriptor "$disk" >"$TEST_TMP/descriptor"
    local count
    count=$(grep -c '^ddb\.vmcrypt\.keySlot\.' "$TEST_TMP/descriptor" || true)
    [[ $count == 1 ]] || fail "expected one key slot, the descriptor has $count: $(grep keySlot "$TEST_TMP/descriptor")"
    grep -q '^ddb\.vmcrypt\.keySlot\.[0-9]* = "type=kmip;' "$TEST_TMP/descriptor" ||
        fail "expected a kmip key slot: $(grep keySlot "$TEST_TMP/descriptor")"
    kmip_slot_param "$disk" key
}

# --- shallow rekey from one KMS key to a new one -------------------------------------------------
expect_exit 0 "$VMCRYPT" encrypt --kms-provider corp "$disk"
first_uid=$(only_kmip_slot)
export_raw "$disk" "$TEST_TMP/cipher-before.raw"

expect_exit 0 "$VMCRYPT" rekey --new-kms-provider corp "$disk"
second_uid=$(only_kmip_slot)
[[ $second_uid != "$first_uid" ]] || fail "expected shallow rekey to seal under a new KMS key, the slot still names $first_uid"
expect_exit 0 "$VMCRYPT" keys list "$disk"
grep -q "kmip kek=corp/$second_uid" <<<"$LAST_STDOUT" || fail "expected keys list to name the KMS key as corp/$second_uid: $LAST_STDOUT"
export_raw "$disk" "$TEST_TMP/cipher-after.raw"
cmp -s "$TEST_TMP/cipher-before.raw" "$TEST_TMP/cipher-after.raw" ||
    fail "expected a shallow rekey to leave the encrypted data as it was"
rm -f "$TEST_TMP/cipher-before.raw" "$TEST_TMP/cipher-after.raw"

# The old key no longer opens the disk: revoking and destroying it changes nothing for the disk.
kmip_python "$port" client1 "$first_uid" '
c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
c.destroy(uid)'
expect_exit 0 "$VMCRYPT" decrypt "$disk"
expect_same_as_raw "$disk" "$plain" "after shallow rekey to a new KMS key and decrypt"

# --- from the key store to the KMS ---------------------------------------------------------------
expect_exit 0 "$VMCRYPT" encrypt "$disk"
expect_exit 0 "$VMCRYPT" rekey --new-kms-provider corp "$disk"
third_uid=$(only_kmip_slot)
[[ $third_uid != "$second_uid" ]] || fail "expected a new KMS key for the rekey from the key store"

# --- deep rekey: a new DEK, resealed under the same KMS key --------------------------------------
expect_exit 0 "$VMCRYPT" rekey --deep "$disk"
[[ $(only_kmip_slot) == "$third_uid" ]] || fail "expected deep rekey without new keys to keep KMS key $third_uid"
expect_qemu_check_clean "$disk" "after a deep rekey with a KMS key"
expect_exit 0 "$VMCRYPT" decrypt "$disk"
expect_same_as_raw "$disk" "$plain" "after a deep rekey with a KMS key and decrypt"
