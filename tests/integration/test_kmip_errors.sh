#!/usr/bin/env bash
# KMS failures that must end in one clear error line, exit status 4 and unchanged disk files. The cases
# are a client certificate of another owner (Permission Denied), an untrusted server certificate, a
# server name that the certificate does not carry, and fake servers on 127.0.0.1. These close the
# connection mid-message, send garbage, break TTLV, speak no TLS or never reply. kms check must show the
# certificate of an untrusted server, and a broken first server must not stop the second from serving.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/kmip_lib.sh"

kmip_make_certs
port=$(free_port)
rogue_port=$(free_port)
kmip_start_server kms "$port" "$KMIP_DIR/keys.db"
kmip_start_server rogue "$rogue_port" "$KMIP_DIR/rogue.db" rogue-server

config="$TEST_TMP/kms.json"
kmip_write_config "$config" corp client1 "$port"

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_random_disk monolithicSparse "$disk" 16M 2M "$TEST_TMP/plain.raw"
expect_exit 0 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp "$disk"
uid=$(kmip_slot_param "$disk" key)
hash_disk_files "$dir" >"$TEST_TMP/encrypted.hashes"

# Runs vmcrypt decrypt on the encrypted disk with CONFIG and fails unless it exits with status 4,
# names the disk first, prints each given text and leaves the disk's files unchanged.
expect_decrypt_key_error() {
    local config_file=$1
    shift
    expect_exit 4 "$VMCRYPT" decrypt --kms-config "$config_file" "$disk"
    [[ $LAST_STDERR == "vmcrypt: $disk: KMS provider "* ]] || fail "the KMS error does not name the disk first: $LAST_STDERR"
    local text
    for text in "$@"; do
        expect_stderr_contains "$text"
    done
    expect_contents_unchanged "$dir" "$TEST_TMP/encrypted.hashes" "decrypt with $(basename "$config_file")"
}

# --- another owner: PyKMIP gives a key only to the identity that created it -----------------------
kmip_write_config "$TEST_TMP/client2.json" corp client2 "$port"
expect_decrypt_key_error "$TEST_TMP/client2.json" "Permission Denied" "127.0.0.1:$port" "key \"$uid\""

# --- an untrusted server certificate and a name it does not carry ---------------------------------
kmip_write_config "$TEST_TMP/rogue.json" corp client1 "$rogue_port"
expect_decrypt_key_error "$TEST_TMP/rogue.json" "not trusted" "127.0.0.1:$rogue_port"

"$PYTHON" - "$config" "$TEST_TMP/wrong-name.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["providers"][0]["servers"][0]["serverName"] = "kms.example.com"
json.dump(config, open(sys.argv[2], "w"))
PY
expect_decrypt_key_error "$TEST_TMP/wrong-name.json" "not trusted" "does not match"

# kms check shows the untrusted certificate with its fingerprint, as openssl computes it.
expect_exit 4 "$VMCRYPT" --json kms check --kms-config "$TEST_TMP/rogue.json"
echo "$LAST_STDOUT" >"$TEST_TMP/check-rogue.json"
expected_fingerprint=$(openssl x509 -in "$KMIP_CERTS/rogue-server.crt" -noout -fingerprint -sha256 | sed 's/^.*=//')
[[ $(json_value "$TEST_TMP/check-rogue.json" sha256Fingerprint) == "$expected_fingerprint" ]] ||
    fail "expected kms check to show the rogue server's SHA-256 fingerprint $expected_fingerprint, got: $LAST_STDOUT"
[[ $(json_value "$TEST_TMP/check-rogue.json" ok) == false ]] || fail "expected kms check of the rogue server to fail"
json_value "$TEST_TMP/check-rogue.json" error | grep -q "not trusted" ||
    fail "expected the kms check error to say the certificate is not trusted, got: $LAST_STDOUT"

# kms check of the real server passes every step and shows its fingerprint and KMIP 1.1.
expect_exit 0 "$VMCRYPT" --json kms check --kms-config "$config" --provider corp
echo "$LAST_STDOUT" >"$TEST_TMP/check.json"
expected_fingerprint=$(openssl x509 -in "$KMIP_CERTS/server.crt" -noout -fingerprint -sha256 | sed 's/^.*=//')
[[ $(json_value "$TEST_TMP/check.json" sha256Fingerprint) == "$expected_fingerprint" ]] ||
    fail "expected kms check to show the server's fingerprint $expected_fingerprint, got: $LAST_STDOUT"
json_value "$TEST_TMP/check.json" kmipVersions | grep -q '"1.1"' || fail "expected KMIP 1.1 among the versions: $LAST_STDOUT"
[[ $(grep -c '"ok": true' "$TEST_TMP/check.json") -ge 9 ]] || fail "expected every kms check step to pass: $LAST_STDOUT"
expect_exit 0 "$VMCRYPT" kms check --kms-config "$config"
grep -q "SHA-256:   $expected_fingerprint" <<<"$LAST_STDOUT" || fail "expected the text report to show the fingerprint: $LAST_STDOUT"

# --- fake servers on 127.0.0.1 --------------------------------------------------------------------
# Each behaviour listens on its own port: TLS servers with the trusted server certificate that break
# the KMIP conversation, a plain TCP server that sends text, and servers that never reply.
"$PYTHON" - "$KMIP_CERTS" "$TEST_TMP/fake-ports" <<'PY' >"$TEST_TMP/fake.log" 2>&1 &
import os, socket, ssl, sys, threading, time

certs, ports_file = sys.argv[1], sys.argv[2]
# The first 24 bytes of a valid Response Message header.
HALF_REPLY = bytes.fromhex("42007b01000000a042007a0100000048420069010000002042006a02")
# A Response Message whose Batch Count Integer carries a non-zero padding byte.
BAD_PADDING = bytes.fromhex("42007b010000001842007a0100000010" "42000d0200000004" "0000000100000001")

def tls_context():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{certs}/server.crt", f"{certs}/server.key")
    context.load_verify_locations(f"{certs}/ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    return context

def serve(name, listener, handle, use_tls):
    context = tls_context() if use_tls else None
    while True:
        connection, _ = listener.accept()
        try:
            if context:
                connection = context.wrap_socket(connection, server_side=True)
            handle(connection)
        except Exception as error:
            print(name, "error:", error, flush=True)
        finally:
            try:
                connection.close()
            except Exception:
                pass

def read_request(connection):
    header = connection.recv(8)
    length = int.from_bytes(header[4:8], "big")
    while length > 0:
        length -= len(connection.recv(length))

def close_mid_message(connection):
    read_request(connection)
    connection.sendall(HALF_REPLY)

def garbage(connection):
    read_request(connection)
    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

def bad_ttlv(connection):
    read_request(connection)
    connection.sendall(BAD_PADDING)

def plain_text(connection):
    connection.sendall(b"220 this is not a KMIP server\r\n")
    time.sleep(0.5)

def silent(connection):
    read_request(connection)
    time.sleep(5)

def silent_tcp(connection):
    time.sleep(5)

behaviours = {"close-mid-message": (close_mid_message, True), "garbage": (garbage, True), "bad-ttlv": (bad_ttlv, True),
              "plain-text": (plain_text, False), "silent": (silent, True), "silent-tcp": (silent_tcp, False)}
lines = []
for name, (handle, use_tls) in behaviours.items():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=serve, args=(name, listener, handle, use_tls), daemon=True).start()
    lines.append(f"{name} {listener.getsockname()[1]}\n")
with open(ports_file + ".tmp", "w") as out:
    out.writelines(lines)
os.rename(ports_file + ".tmp", ports_file)
threading.Event().wait()
PY
fake_pid=$!
register_background_pid "$fake_pid"
for _ in $(seq 1 100); do
    [[ -e $TEST_TMP/fake-ports ]] && break
    process_running "$fake_pid" || fail "test setup: the fake servers did not start: $(cat "$TEST_TMP/fake.log")"
    sleep 0.05
done
fake_port() {
    awk -v name="$1" '$1 == name { print $2 }' "$TEST_TMP/fake-ports"
}

# Writes a configuration with one fake server and a time-out of 1 s.
fake_config() {
    local name=$1 file="$TEST_TMP/fake-$1.json"
    kmip_write_config "$file" corp client1 "$(fake_port "$name")"
    sed -i 's/"timeoutSeconds": 5/"timeoutSeconds": 1/' "$file"
    echo "$file"
}

expect_decrypt_key_error "$(fake_config close-mid-message)" "closed the connection in the middle of the reply" \
    "after 28 of 168 bytes"
expect_decrypt_key_error "$(fake_config garbage)" "invalid KMIP reply" "does not start like a KMIP message"
expect_decrypt_key_error "$(fake_config bad-ttlv)" "invalid KMIP reply" "non-zero padding byte"
expect_decrypt_key_error "$(fake_config plain-text)" "TLS"
expect_decrypt_key_error "$(fake_config silent)" "no reply within 1 s waiting for the reply"
expect_decrypt_key_error "$(fake_config silent-tcp)" "no reply within 1 s during the TLS handshake"

# A broken first server does not stop the second: decrypt works through the real server.
kmip_write_config "$TEST_TMP/broken-first.json" corp client1 "$(fake_port garbage)" "$port"
expect_exit 0 "$VMCRYPT" decrypt --kms-config "$TEST_TMP/broken-first.json" "$disk"
expect_stderr_contains "used 127.0.0.1:$port instead"
expect_same_as_raw "$disk" "$TEST_TMP/plain.raw" "after decrypt past a broken first server"

# --- unsafe or broken provider files --------------------------------------------------------------
hash_disk_files "$dir" >"$TEST_TMP/plain.hashes"
chmod 644 "$KMIP_CERTS/client1.key"
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$config" --kms-provider corp "$disk"
expect_stderr_contains "chmod o-rwx"
expect_exit 4 "$VMCRYPT" --json kms check --kms-config "$config"
json_value "$TEST_TMP/last.stdout" error | grep -q "chmod o-rwx" ||
    fail "expected kms check to report the unsafe client key of the provider, got: $LAST_STDOUT"
chmod 600 "$KMIP_CERTS/client1.key"

"$PYTHON" - "$config" "$TEST_TMP/wrong-key.json" "$KMIP_CERTS/client2.key" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["providers"][0]["clientKey"] = sys.argv[3]
json.dump(config, open(sys.argv[2], "w"))
PY
expect_exit 4 "$VMCRYPT" encrypt --kms-config "$TEST_TMP/wrong-key.json" --kms-provider corp "$disk"
expect_stderr_contains "does not belong to the client certificate"

echo '{"providers": [{"id": "corp", "servers": [{"host": "127.0.0.1", "port": 70000}]}]}' >"$TEST_TMP/bad.json"
expect_exit 3 "$VMCRYPT" encrypt --kms-config "$TEST_TMP/bad.json" --kms-provider corp "$disk"
expect_stderr_contains "providers[0].servers[0].port must be an integer from 1 to 65535"
expect_contents_unchanged "$dir" "$TEST_TMP/plain.hashes" "encrypt with broken provider files"
