# Helpers for the qcow2 integration tests; source after lib.sh.

QEMU_SECRET_OBJECT='secret,id=sec0,data=PASS'

# Writes VALUE as a big-endian integer of WIDTH bytes at byte OFFSET of FILE, in place.
write_be_integer() {
    "$PYTHON" - "$@" <<'PY'
import os, sys

path, offset, width, value = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
fd = os.open(path, os.O_WRONLY)
os.pwrite(fd, value.to_bytes(width, "big"), offset)
os.close(fd)
PY
}

# Prints the value at the dotted PATH (for example qcow2.allocation.compressedClusters) of the JSON
# document in FILE; objects, arrays, booleans and null as JSON.
json_path() {
    "$PYTHON" - "$1" "$2" <<'PY'
import json, sys

value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
print(json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else value)
PY
}

# Runs qemu-img with the arguments, retrying up to 10 times when it fails with "Unable to get accurate
# CPU usage": qemu-img 7.2 measures the PBKDF2 speed for a LUKS key slot and fails when a loaded
# machine gives its benchmark no measurable CPU time.
qemu_img_retrying() {
    local attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if qemu-img "$@" 2>"$TEST_TMP/qemu-img.err"; then
            return 0
        fi
        grep -q "Unable to get accurate CPU usage" "$TEST_TMP/qemu-img.err" || break
    done
    fail "qemu-img $* failed: $(cat "$TEST_TMP/qemu-img.err")"
}
