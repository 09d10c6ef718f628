#!/usr/bin/env bash
# Failover across the servers of one KMS provider: two PyKMIP servers share one key database, the first
# with an RSA server certificate and the second with an ECDSA one. With the
# first server stopped, encrypt and decrypt still work through the second. With both stopped, every
# command fails with exit status 4, names both servers, and leaves every disk file unchanged.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/kmip_lib.sh"

kmip_make_certs
port1=$(free_port)
port2=$(free_port)
kmip_start_server first "$port1" "$KMIP_DIR/shared.db"
first_pid=$KMIP_PID
kmip_start_server second "$port2" "$KMIP_DIR/shared.db" server-ec
second_pid=$KMIP_PID
config="$TEST_TMP/kms.json"
kmip_write_config "$config" cluster client1 "$port1" "$port2"
export VMCRYPT_KMS_CONFIG="$config"

# Both servers pass kms check, with an RSA and an ECDSA cipher suite.
expect_exit 0 "$VMCRYPT" kms check
grep -q "TLS:.*ECDHE_RSA_WITH_AES_" <<<"$LAST_STDOUT" || fail "expected an ECDHE_RSA suite with the first server: $LAST_STDOUT"
grep -q "TLS:.*ECDHE_ECDSA_WITH_AES_" <<<"$LAST_STDOUT" || fail "expected an ECDHE_ECDSA suite with the second server: $LAST_STDOUT"

# Disk A is encrypted while both servers run, so its key is created through the first server.
dir_a="$TEST_TMP/a"
dir_b="$TEST_TMP/b"
mkdir "$dir_a" "$dir_b"
make_small_disk "$dir_a/disk.vmdk" "$TEST_TMP/a.raw"
make_random_disk monolithicSparse "$dir_b/disk.vmdk" 16M 4M "$TEST_TMP/b.raw"

expect_exit 0 "$VMCRYPT" encrypt --kms-provider cluster "$dir_a/disk.vmdk"
uid_a=$(kmip_slot_param "$dir_a/disk.vmdk" key)
grep -q "Processing operation: Create" "$KMIP_DIR/first/server.log" ||
    fail "expected the first server to create the key of disk A; its log: $(tail -n 5 "$KMIP_DIR/first/server.log")"

# --- the first server is down: everything goes to the second ------------------------------------
kmip_stop_server "$first_pid"
expect_exit 0 "$VMCRYPT" decrypt "$dir_a/disk.vmdk"
expect_stderr_contains "127.0.0.1:$port1"
expect_stderr_contains "used 127.0.0.1:$port2 instead"
expect_same_as_raw "$dir_a/disk.vmdk" "$TEST_TMP/a.raw" "after decrypt through the second server"
grep -q "Getting a SymmetricKey with ID: $uid_a" "$KMIP_DIR/second/server.log" ||
    fail "expected the second server to hand out key $uid_a of disk A"

expect_exit 0 "$VMCRYPT" encrypt --kms-provider cluster "$dir_b/disk.vmdk"
uid_b=$(kmip_slot_param "$dir_b/disk.vmdk" key)
[[ -n $uid_b && $uid_b != "$uid_a" ]] ||
    fail "expected a new key for disk B through the second server, got '$uid_b' (disk A has '$uid_a')"
expect_exit 0 "$VMCRYPT" encrypt --kms-provider cluster "$dir_a/disk.vmdk"
uid_a=$(kmip_slot_param "$dir_a/disk.vmdk" key)

# --- both servers down: exit status 4, both servers named, nothing changed -----------------------
kmip_stop_server "$second_pid"
hash_disk_files "$dir_a" >"$TEST_TMP/a.hashes"
hash_disk_files "$dir_b" >"$TEST_TMP/b.hashes"
plain_dir="$TEST_TMP/plain"
mkdir "$plain_dir"
make_random_disk monolithicSparse "$plain_dir/disk.vmdk" 16M 1M "$TEST_TMP/plain.raw"
hash_disk_files "$plain_dir" >"$TEST_TMP/plain.hashes"

for disk in "$dir_a/disk.vmdk" "$dir_b/disk.vmdk"; do
    expect_exit 4 "$VMCRYPT" decrypt "$disk"
    expect_stderr_contains "failed on every server"
    expect_stderr_contains "127.0.0.1:$port1: connect: Connection refused"
    expect_stderr_contains "127.0.0.1:$port2: connect: Connection refused"
done
expect_exit 4 "$VMCRYPT" encrypt --kms-provider cluster "$plain_dir/disk.vmdk"
expect_stderr_contains "Create of a new key failed on every server"
expect_exit 4 "$VMCRYPT" --json decrypt "$dir_b/disk.vmdk"
[[ $(json_value "$TEST_TMP/last.stdout" exitCode) == 4 ]] || fail "expected exitCode 4 in the JSON error, got: $LAST_STDOUT"

expect_contents_unchanged "$dir_a" "$TEST_TMP/a.hashes" "decrypt with every KMS server down"
expect_contents_unchanged "$dir_b" "$TEST_TMP/b.hashes" "decrypt with every KMS server down"
expect_contents_unchanged "$plain_dir" "$TEST_TMP/plain.hashes" "encrypt with every KMS server down"
for folder in "$dir_a" "$dir_b" "$plain_dir"; do
    if compgen -G "$folder/*.vmcrypt-journal" >/dev/null; then
        fail "expected no journal in $folder after a failed run: $(ls "$folder")"
    fi
done

# --- the second server comes back alone: the disks decrypt again ---------------------------------
kmip_start_server second "$port2" "$KMIP_DIR/shared.db" server-ec
expect_exit 0 "$VMCRYPT" decrypt "$dir_a/disk.vmdk"
expect_same_as_raw "$dir_a/disk.vmdk" "$TEST_TMP/a.raw" "after decrypt with only the second server back"
expect_exit 0 "$VMCRYPT" decrypt "$dir_b/disk.vmdk"
expect_same_as_raw "$dir_b/disk.vmdk" "$TEST_TMP/b.raw" "after decrypt of disk B"
