# Helpers for the KMIP integration tests: certificates made with openssl, PyKMIP 0.10 servers
# (Debian's pykmip-server) on 127.0.0.1 at free ports, and KMS configuration files for vmcrypt.
# Source it after lib.sh. Every server started here is stopped by its PID when the script exits.

command -v pykmip-server >/dev/null || fail "required tool pykmip-server (Debian package python3-pykmip) is not installed"
command -v openssl >/dev/null || fail "required tool openssl is not installed"

KMIP_DIR="$TEST_TMP/kmip"
KMIP_CERTS="$KMIP_DIR/certs"
KMIP_SERVER_PIDS=()

# Stops every PyKMIP server still running. SIGINT ends PyKMIP 0.10 within about 2 s, while SIGTERM waits
# for its 10 s accept time-out. The server and its helper processes run in a process group of their own
# whose id is the server's PID, so the signal goes to that group.
kmip_stop_all() {
    local pid
    for pid in "${KMIP_SERVER_PIDS[@]}"; do
        kmip_stop_pid "$pid"
    done
    KMIP_SERVER_PIDS=()
}

kmip_stop_pid() {
    local pid=$1
    kill -INT -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops the servers, then runs lib.sh's cleanup with the script's exit status. errexit is off here,
# because `(exit STATUS)` with a failing status would otherwise end the trap before that cleanup.
kmip_cleanup() {
    local status=$?
    set +e
    kmip_stop_all
    (exit "$status")
    cleanup_test_tmp
}
trap kmip_cleanup EXIT

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Creates in $KMIP_CERTS: a CA (ca.crt), server certificates for 127.0.0.1 and localhost signed by it
# (server.crt with an RSA key, for which PyKMIP offers only CBC cipher suites, and server-ec.crt with an
# ECDSA P-256 key), client certificates client1 and client2
# (ECDSA P-256, CN = the identity PyKMIP uses as key owner), and a second CA (rogue-ca.crt) with a server
# certificate for 127.0.0.1 (rogue-server.crt) that vmcrypt must not trust.
kmip_make_certs() {
    mkdir -p "$KMIP_CERTS"
    (
        cd "$KMIP_CERTS"
        local ca
        for ca in ca rogue-ca; do
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$ca.key" -out "$ca.crt" \
                -days 30 -sha256 -subj "/CN=vmcrypt test $ca" \
                -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        done
        cat >server.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EXT
        cat >client.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 30 \
            -sha256 -extfile server.ext 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server-ec.key -out server-ec.csr \
            -subj "/CN=127.0.0.1" 2>/dev/null
        openssl x509 -req -in server-ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server-ec.crt -days 30 \
            -sha256 -extfile server.ext 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue-server.key \
            -out rogue-server.csr -subj "/CN=127.0.0.1" 2>/dev/null
        openssl x509 -req -in rogue-server.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial \
            -out rogue-server.crt -days 30 -sha256 -extfile server.ext 2>/dev/null
        local client
        for client in client1 client2; do
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$client.key" -out "$client.csr" \
                -subj "/CN=$client" 2>/dev/null
            openssl x509 -req -in "$client.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$client.crt" \
                -days 30 -sha256 -extfile client.ext 2>/dev/null
        done
        chmod 600 ./*.key
    ) || fail "test setup: openssl could not make the test certificates"
}

# Starts a PyKMIP server named NAME on 127.0.0.1:PORT with the key database DB (servers given the same
# DB share their keys) and the server certificate CERT_NAME of $KMIP_CERTS (default: server). Sets
# KMIP_PID. Returns when the server accepts connections.
kmip_start_server() {
    local name=$1 port=$2 database=$3 cert_name=${4:-server}
    local dir="$KMIP_DIR/$name"
    mkdir -p "$dir"
    # A restarted server must not be taken for ready because of the previous run's log lines.
    if [[ -e $dir/server.log ]]; then
        mv "$dir/server.log" "$dir/server.log.$(date +%s%N)"
    fi
    cat >"$dir/server.conf" <<CONF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$KMIP_CERTS/$cert_name.crt
key_path=$KMIP_CERTS/$cert_name.key
ca_path=$KMIP_CERTS/ca.crt
auth_suite=TLS1.2
enable_tls_client_auth=True
tls_cipher_suites=
logging_level=INFO
database_path=$database
CONF
    # setsid: the server and its helper processes get a process group of their own, stopped together.
    (cd "$dir" && exec setsid pykmip-server -f "$dir/server.conf" -l "$dir/server.log" >"$dir/stderr.log" 2>&1) &
    KMIP_PID=$!
    KMIP_SERVER_PIDS+=("$KMIP_PID")
    local waited
    for waited in $(seq 1 150); do
        if grep -q "Starting connection service" "$dir/server.log" 2>/dev/null; then
            return 0
        fi
        process_running "$KMIP_PID" ||
            fail "test setup: pykmip-server $name exited at start: $(tail -n 5 "$dir/stderr.log" "$dir/server.log" 2>/dev/null)"
        sleep 0.1
    done
    fail "test setup: pykmip-server $name did not start within 15 s: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
}

# Stops the server with PID and removes it from KMIP_SERVER_PIDS.
kmip_stop_server() {
    local pid=$1 remaining=() other
    kmip_stop_pid "$pid"
    for other in "${KMIP_SERVER_PIDS[@]}"; do
        [[ $other == "$pid" ]] || remaining+=("$other")
    done
    KMIP_SERVER_PIDS=("${remaining[@]}")
}

# Writes a KMS configuration FILE with one provider ID whose servers are the given ports on 127.0.0.1,
# in order, using the client certificate CLIENT (client1 or client2).
# Usage: kmip_write_config FILE ID CLIENT PORT [PORT...]
kmip_write_config() {
    local file=$1 id=$2 client=$3
    shift 3
    "$PYTHON" - "$file" "$id" "$client" "$KMIP_CERTS" "$@" <<'PY'
import json, sys

file, provider_id, client, certs = sys.argv[1:5]
ports = [int(port) for port in sys.argv[5:]]
config = {"providers": [{
    "id": provider_id,
    "servers": [{"host": "127.0.0.1", "port": port} for port in ports],
    "ca": f"{certs}/ca.crt",
    "clientCertificate": f"{certs}/{client}.crt",
    "clientKey": f"{certs}/{client}.key",
    "timeoutSeconds": 5,
}]}
with open(file, "w") as out:
    json.dump(config, out, indent=2)
PY
}

# Prints the value of parameter NAME in the kmip key slot of DISK's descriptor.
kmip_slot_param() {
    local disk=$1 name=$2
    read_descriptor "$disk" | sed -n 's/^ddb\.vmcrypt\.keySlot\.[0-9]* = "\(type=kmip;.*\)"$/\1/p' | head -n 1 |
        tr ';' '\n' | sed -n "s/^$name=//p"
}

# Runs a Python snippet with a PyKMIP client (ProxyKmipClient as the identity CLIENT) connected to
# 127.0.0.1:PORT. The snippet gets the client as `c`, the key UID as `uid` and kmip.core.enums as `enums`.
# Usage: kmip_python PORT CLIENT UID 'snippet'
kmip_python() {
    local port=$1 client=$2 uid=$3 snippet=$4
    "$PYTHON" - "$port" "$KMIP_CERTS" "$client" "$uid" "$snippet" <<'PY'
import logging, sys, warnings
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
from kmip.pie.client import ProxyKmipClient
from kmip.core import enums

port, certs, client, uid, snippet = sys.argv[1:6]
c = ProxyKmipClient(hostname="127.0.0.1", port=int(port), cert=f"{certs}/{client}.crt", key=f"{certs}/{client}.key",
                    ca=f"{certs}/ca.crt", ssl_version="PROTOCOL_TLSv1_2", config_file="/dev/null",
                    kmip_version=enums.KMIPVersion.KMIP_1_1)
with c:
    exec(snippet)
PY
}
