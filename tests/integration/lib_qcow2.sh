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

# Runs qemu-img with the arguments, retrying up to 30 times, a third of a second apart, when it fails
# with "Unable to get accurate CPU usage". qemu-img 7.2 measures the PBKDF2 speed for a LUKS key slot
# on a new thread, and its first round can finish before getrusage counts any CPU time. Ten attempts
# in a row failed that way while another job loaded both cores.
qemu_img_retrying() {
    local attempt
    for attempt in $(seq 30); do
        if qemu-img "$@" 2>"$TEST_TMP/qemu-img.err"; then
            return 0
        fi
        grep -q "Unable to get accurate CPU usage" "$TEST_TMP/qemu-img.err" || break
        sleep 0.3
    done
    fail "qemu-img $* failed: $(cat "$TEST_TMP/qemu-img.err")"
}

# Creates IMAGE of QCOW2_IMAGE_SIZE (default 64M) from an ext4 file system (mkfs.ext4 -d) with qemu-img
# convert OPTIONS (-c for compression is one of them), then writes patterns with qemu-io, and exports
# the guest data to RAW.
make_qcow2_ext4() {
    local image=$1 raw=$2
    shift 2
    local build bytes
    bytes=$(numfmt --from=iec "${QCOW2_IMAGE_SIZE:-64M}")
    build=$(mktemp -d "$TEST_TMP/build.XXXXXX")
    make_marker_tree "$build/tree"
    truncate -s "$bytes" "$build/fs.raw"
    mkfs.ext4 -q -F -d "$build/tree" "$build/fs.raw" "$EXT4_FS_SIZE"
    qemu-img convert -f raw -O qcow2 "$@" "$build/fs.raw" "$image"
    qemu-io -f qcow2 -c "write -P 0x5a 0 512" -c "write -P 0xa5 $((bytes - 512)) 512" \
        -c "write -P 0xc3 $((bytes * 3 / 4 / 65536 * 65536 - 1536)) 4096" -c "write -z 40M 1M" "$image" >/dev/null
    qemu-img convert -f qcow2 -O raw "$image" "$raw"
    rm -rf "$build"
}

# Prints the DEK (hex) that KEY_FILE (32 raw bytes, the KEK) unwraps from a key-file slot of the vmcrypt
# header extension of the qcow2 IMAGE. Needs python3-cryptography.
qcow2_dek_of() {
    "$PYTHON" - "$1" "$2" <<'PY'
import base64, re, sys
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
with open(sys.argv[1], "rb") as image:
    cluster0 = image.read(2 << 20)
kek = open(sys.argv[2], "rb").read()
for slot in re.findall(rb"^keySlot\.\d+=([^\n]*)$", cluster0, re.M):
    fields = dict(item.split("=", 1) for item in slot.decode().split(";"))
    if "dek" not in fields:
        continue
    try:
        print(aes_key_unwrap(kek, base64.b64decode(fields["dek"])).hex())
        sys.exit(0)
    except InvalidUnwrap:
        continue
sys.exit(f"no key slot of {sys.argv[1]} unwraps with {sys.argv[2]}")
PY
}

# Checks every 512-byte unit of the guest data of the encrypted qcow2 IMAGE with an AES-XTS
# implementation independent of vmcrypt (python3-cryptography). MAP is the `qemu-img map --output=json`
# of the image before it was encrypted, and RAW its guest data. Encrypt and rekey keep uncompressed data
# clusters where they are, so the map's host offsets stay valid. Each unit must decrypt to its plaintext under DEK (hex)
# with tweak = host offset / 512, and, with OLD_DEK, none may decrypt to its plaintext under OLD_DEK.
check_qcow2_units() {
    local image=$1 map=$2 raw=$3 dek=$4 old_dek=$5 context=$6
    "$PYTHON" - "$image" "$map" "$raw" "$dek" "$old_dek" <<'PY' || fail "unit check failed $context (see above)"
import json, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
image_path, map_path, raw_path, dek_hex, old_hex = sys.argv[1:6]
dek, old = bytes.fromhex(dek_hex), bytes.fromhex(old_hex) if old_hex else None
UNIT = 512

def decrypt(key, unit, sector):
    decryptor = Cipher(algorithms.AES(key), modes.XTS(sector.to_bytes(16, "little"))).decryptor()
    return decryptor.update(unit) + decryptor.finalize()

checked = wrong = old_matches = 0
with open(image_path, "rb") as image, open(raw_path, "rb") as raw:
    for entry in json.load(open(map_path)):
        if not entry["data"] or "offset" not in entry:
            continue
        image.seek(entry["offset"])
        cipher = image.read(entry["length"])
        raw.seek(entry["start"])
        plain = raw.read(entry["length"])
        for at in range(0, entry["length"], UNIT):
            sector = (entry["offset"] + at) // UNIT
            c, p = cipher[at:at + UNIT], plain[at:at + UNIT]
            checked += 1
            wrong += decrypt(dek, c, sector) != p
            if old is not None:
                old_matches += decrypt(old, c, sector) == p
if checked == 0:
    sys.exit("no data unit to check")
if wrong or old_matches:
    sys.exit(f"of {checked} units {wrong} do not decrypt under the DEK and {old_matches} still decrypt under "
             "the old DEK")
PY
}

# Fails unless libqcow (python3-libqcow) reads the guest data of the qcow2 IMAGE as the raw file RAW
# holds it; PASSWORD, when given, is the legacy qcow AES password libqcow decrypts with. libqcow
# 20201213 reads clusters with the version 3 zero flag as the cluster at offset 0 (the header), so
# the ranges that qemu-img map reports as zero without data are left out.
expect_libqcow_reads() {
    local image=$1 raw=$2 password=${3:-}
    if [[ -n $password ]]; then
        qemu-img map --output=json --object "secret,id=sec0,data=$password" \
            --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" >"$TEST_TMP/map.json"
    else
        qemu-img map -f qcow2 --output=json "$image" >"$TEST_TMP/map.json"
    fi
    "$PYTHON" - "$image" "$raw" "$TEST_TMP/map.json" "$password" <<'PY' || fail "libqcow reads other guest data than qemu-img from $image"
import json, sys
import pyqcow

image = pyqcow.file()
if sys.argv[4]:
    image.set_password(sys.argv[4])
image.open(sys.argv[1])
with open(sys.argv[2], "rb") as raw, open(sys.argv[3]) as map_file:
    for entry in json.load(map_file):
        if entry["zero"] and not entry["data"]:
            continue
        offset, end = entry["start"], entry["start"] + entry["length"]
        while offset < end:
            length = min(1 << 20, end - offset)
            raw.seek(offset)
            if image.read_buffer_at_offset(length, offset) != raw.read(length):
                sys.exit(f"libqcow differs from qemu-img in the 1 MiB at guest offset {offset}")
            offset += length
image.close()
PY
}
