# Shared helpers for the vmcrypt integration tests.
#
# A test script starts with
#   set -euo pipefail
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# and needs VMCRYPT (path of the vmcrypt binary) in its environment, which CTest sets.
# The tests drive real peers: qemu-img and qemu-io 7.2, mkfs.ext4, e2fsck, debugfs and python3.
# Set VMCRYPT_TEST_KEEP=1 to keep the temporary folder of a test for debugging.

TEST_NAME=$(basename "${BASH_SOURCE[1]:-$0}" .sh)

# Marker string written many times into the ext4 file system of every test disk. After encryption
# no extent file may contain it.
PLAINTEXT_MARKER="VMCRYPT-PLAINTEXT-MARKER"

# Size of the ext4 file system made at offset 0 of every ext4 test disk. It is smaller than the disk
# so that the pattern writes near the end of the disk land outside the file system.
EXT4_FS_SIZE=32M

# qemu-img splits twoGbMaxExtent* disks every 4194304 sectors (2 GiB), VMware at 2047 MiB.
QEMU_SPLIT_BYTES=$((2 * 1024 * 1024 * 1024))

fail() {
    echo "FAIL ${TEST_NAME}: $*" >&2
    exit 1
}

# Prints a line that a reader of the test log should see although the test goes on (a skipped check).
note() {
    echo "note ${TEST_NAME}: $*" >&2
}

if [[ -z ${VMCRYPT:-} ]]; then
    fail "VMCRYPT is not set: set it to the path of the vmcrypt binary"
fi
if [[ ! -x $VMCRYPT ]]; then
    fail "VMCRYPT=$VMCRYPT is not an executable file"
fi
for required_tool in qemu-img qemu-io mkfs.ext4 e2fsck debugfs numfmt; do
    command -v "$required_tool" >/dev/null || fail "required tool $required_tool is not installed"
done

# The helpers run many short Python scripts, so prefer the system interpreter: a version manager's
# shim (pyenv) adds about 0.1 s to every start.
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x /usr/bin/python3 ]]; then
        PYTHON=/usr/bin/python3
    else
        PYTHON=$(command -v python3) || fail "required tool python3 is not installed"
    fi
fi

TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vmcrypt-${TEST_NAME}.XXXXXX")
BACKGROUND_PIDS=()

cleanup_test_tmp() {
    local status=$?
    local pid
    for pid in "${BACKGROUND_PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${VMCRYPT_TEST_KEEP:-0} == 1 ]]; then
        echo "${TEST_NAME}: kept temporary folder $TEST_TMP" >&2
    else
        rm -rf "$TEST_TMP"
    fi
    exit "$status"
}
trap cleanup_test_tmp EXIT

# Remembers a background process of the test so that the exit trap kills it if the test fails.
register_background_pid() {
    BACKGROUND_PIDS+=("$1")
}

forget_background_pid() {
    local pid remaining=()
    for pid in "${BACKGROUND_PIDS[@]}"; do
        [[ $pid == "$1" ]] || remaining+=("$pid")
    done
    BACKGROUND_PIDS=("${remaining[@]}")
}

# Isolate the test from the user's keys and passphrase.
export HOME="$TEST_TMP/home"
export XDG_DATA_HOME="$HOME/.local/share"
mkdir -p "$HOME"
unset VMCRYPT_PASSPHRASE
export VMCRYPT_KEYSTORE="$TEST_TMP/keystore"
mkdir -m 0700 "$VMCRYPT_KEYSTORE"

# Runs a command with stdout and stderr captured into LAST_STDOUT and LAST_STDERR and fails the test
# unless the exit code is CODE. A failing vmcrypt command (CODE other than 0) must print exactly one
# line on stderr, starting with "vmcrypt: ".
# Usage: expect_exit CODE command [argument...]
expect_exit() {
    local expected=$1
    shift
    local code=0
    "$@" >"$TEST_TMP/last.stdout" 2>"$TEST_TMP/last.stderr" || code=$?
    LAST_STDOUT=$(cat "$TEST_TMP/last.stdout")
    LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
    if [[ $code != "$expected" ]]; then
        fail "expected exit code $expected, got $code from: $*
--- stderr ---
$LAST_STDERR
--- stdout ---
$LAST_STDOUT"
    fi
    if [[ $expected != 0 ]]; then
        check_one_error_line "$*"
    fi
}

# Like expect_exit, but accepts any of the codes listed in the first argument ("0 3") and sets
# LAST_EXIT to the exit code.
expect_exit_in() {
    local accepted=$1
    shift
    local code=0
    "$@" >"$TEST_TMP/last.stdout" 2>"$TEST_TMP/last.stderr" || code=$?
    LAST_STDOUT=$(cat "$TEST_TMP/last.stdout")
    LAST_STDERR=$(cat "$TEST_TMP/last.stderr")
    LAST_EXIT=$code
    if [[ " $accepted " != *" $code "* ]]; then
        fail "expected one of the exit codes ($accepted), got $code from: $*
--- stderr ---
$LAST_STDERR"
    fi
    if [[ $code != 0 ]]; then
        check_one_error_line "$*"
    fi
}

check_one_error_line() {
    local line_count
    line_count=$(awk 'END { print NR }' "$TEST_TMP/last.stderr")
    if [[ $line_count != 1 ]]; then
        fail "expected exactly one error line on stderr, got $line_count lines from: $1
--- stderr ---
$LAST_STDERR"
    fi
    if [[ $LAST_STDERR != "vmcrypt: "* ]]; then
        fail "expected the error line to start with 'vmcrypt: ', got: $LAST_STDERR (from: $1)"
    fi
}

# Fails unless the stderr of the last expect_exit contains TEXT (case-insensitive).
expect_stderr_contains() {
    if ! grep -qiF -- "$1" "$TEST_TMP/last.stderr"; then
        fail "expected stderr to contain '$1', got: $LAST_STDERR"
    fi
}

# Fails unless the stderr of the last expect_exit contains at least one of the given texts.
expect_stderr_contains_any() {
    local text
    for text in "$@"; do
        if grep -qiF -- "$text" "$TEST_TMP/last.stderr"; then
            return 0
        fi
    done
    fail "expected stderr to contain one of: $*; got: $LAST_STDERR"
}

# Prints one line per file under DIR: a SHA-256 content digest, the size and the relative path.
# The digest covers the size and every 64 KiB block that is not all zero, with its offset, and reads
# only the data ranges (SEEK_DATA), so a 2 GiB sparse extent hashes fast. Files with equal digests have
# equal contents, whatever their holes.
# With IGNORE_DESCRIPTOR_TAIL=1, the bytes after the text of an embedded descriptor (after its first
# NUL) count as zeros: qemu-img can leave a few stale characters there when it rewrites the CID, and
# vmcrypt writes the area NUL-padded, so only the descriptor text is expected to survive a round trip.
hash_disk_files() {
    IGNORE_DESCRIPTOR_TAIL=${IGNORE_DESCRIPTOR_TAIL:-0} "$PYTHON" - "$1" <<'PY'
import errno, hashlib, os, struct, sys

BLOCK = 65536
ZERO_BLOCK = bytes(BLOCK)

def data_ranges(fd, size):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end

def descriptor_tail(fd):
    """The byte range after the embedded descriptor's text in a hosted sparse extent, or None."""
    header = os.pread(fd, 512, 0)
    if os.environ.get("IGNORE_DESCRIPTOR_TAIL") != "1" or header[:4] != b"KDMV":
        return None
    offset, length = struct.unpack_from("<QQ", header, 28)
    area = os.pread(fd, length * 512, offset * 512)
    end = area.find(b"\0")
    return None if end < 0 else (offset * 512 + end, offset * 512 + len(area))

def content_digest(path):
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        tail = descriptor_tail(fd)
        digest.update(size.to_bytes(8, "little"))
        last_block = -BLOCK
        for start, end in data_ranges(fd, size):
            block = max(start // BLOCK * BLOCK, last_block + BLOCK)
            while block < end:
                data = os.pread(fd, BLOCK, block)
                if tail and block < tail[1] and block + len(data) > tail[0]:
                    first = max(tail[0], block) - block
                    last = min(tail[1], block + len(data)) - block
                    data = data[:first] + bytes(last - first) + data[last:]
                if data and data != ZERO_BLOCK[:len(data)]:
                    digest.update(block.to_bytes(8, "little"))
                    digest.update(data)
                last_block = block
                block += BLOCK
    finally:
        os.close(fd)
    return digest.hexdigest(), size

root = sys.argv[1]
entries = []
for folder, subfolders, files in os.walk(root):
    subfolders.sort()
    for name in files:
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            entries.append(("not-a-regular-file", 0, os.path.relpath(path, root)))
            continue
        digest, size = content_digest(path)
        entries.append((digest, size, os.path.relpath(path, root)))
for digest, size, name in sorted(entries, key=lambda entry: entry[2]):
    print(digest, size, name)
PY
}

# Prints the listing of DIR with full-precision modification times, including the folder itself. The
# "total" line of allocated blocks is left out: ext4 can still change it after a write has returned
# (delayed allocation), with no process touching the files.
list_dir_state() {
    ls -la --time-style=full-iso "$1" | grep -v -e ' \.\.$' -e '^total '
}

# Saves the contents and the listing of DIR into STATE_FILE.
save_dir_state() {
    {
        hash_disk_files "$1"
        echo "--- listing ---"
        list_dir_state "$1"
    } >"$2"
}

# Fails unless DIR still has the contents and listing saved in STATE_FILE. CONTEXT names the step
# that ran since the state was saved.
expect_dir_unchanged() {
    local dir=$1 state_file=$2 context=$3
    save_dir_state "$dir" "$TEST_TMP/state.now"
    if ! cmp -s "$state_file" "$TEST_TMP/state.now"; then
        fail "files in $dir changed after $context:
$(diff "$state_file" "$TEST_TMP/state.now" || true)"
    fi
}

# Like expect_dir_unchanged, but compares the file contents only (not modification times).
expect_contents_unchanged() {
    local dir=$1 hash_file=$2 context=$3
    hash_disk_files "$dir" >"$TEST_TMP/hashes.now"
    if ! cmp -s "$hash_file" "$TEST_TMP/hashes.now"; then
        fail "file contents in $dir changed after $context:
$(diff "$hash_file" "$TEST_TMP/hashes.now" || true)"
    fi
}

# Creates a folder with the files copied into every ext4 test file system. marker.txt repeats
# the plaintext marker on 200 lines.
make_marker_tree() {
    local tree=$1
    mkdir -p "$tree/sub"
    local line
    for line in $(seq 1 200); do
        echo "$PLAINTEXT_MARKER line $line"
    done >"$tree/marker.txt"
    cp /etc/services "$tree/services"
    echo "hello from the vmcrypt integration tests" >"$tree/sub/hello.txt"
    head -c 300000 /dev/urandom >"$tree/sub/random.bin"
}

is_split_subformat() {
    [[ $1 == twoGbMaxExtentSparse || $1 == twoGbMaxExtentFlat ]]
}

# Prints the text of the descriptor of DISK without its NUL padding: the embedded descriptor of a
# hosted sparse extent ("KDMV" header, descriptorOffset at byte 28, descriptorSize at byte 36, in
# sectors), else the whole file.
read_descriptor() {
    "$PYTHON" - "$1" <<'PY'
import struct, sys

with open(sys.argv[1], "rb") as disk:
    header = disk.read(512)
    if header[:4] == b"KDMV":
        descriptor_sector, descriptor_sectors = struct.unpack_from("<QQ", header, 28)
        disk.seek(descriptor_sector * 512)
        text = disk.read(descriptor_sectors * 512)
    else:
        disk.seek(0)
        text = disk.read()
sys.stdout.buffer.write(text.split(b"\0", 1)[0])
PY
}

# Prints the paths of the extent files named by the descriptor of DISK, one a line.
extent_files() {
    local disk=$1
    read_descriptor "$disk" | "$PYTHON" -c '
import os, re, sys
folder = os.path.dirname(sys.argv[1])
for line in sys.stdin:
    match = re.match(r"\s*(RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+\"([^\"]+)\"", line)
    if match:
        print(os.path.join(folder, match.group(2)))
' "$disk"
}

# Creates a VMDK of SIZE (qemu-img size syntax, for example 64M) at PATH in SUBFORMAT: a qemu-img
# subformat, or vmfs or vmfsThin, handcrafted from a monolithicFlat disk.
# The disk contains an ext4 file system of EXT4_FS_SIZE at offset 0, made by mkfs.ext4 -d from a folder
# with the plaintext marker. qemu-io then writes patterns at the first and the last sector and across
# a grain boundary at 3/4 of the disk. On split disks it also writes across the first extent boundary.
make_ext4_disk() {
    local subformat=$1 path=$2 size=$3
    local bytes build qemu_subformat
    bytes=$(numfmt --from=iec "$size")
    build=$(mktemp -d "$TEST_TMP/build.XXXXXX")

    make_marker_tree "$build/tree"
    truncate -s "$bytes" "$build/fs.raw"
    mkfs.ext4 -q -F -d "$build/tree" "$build/fs.raw" "$EXT4_FS_SIZE"

    qemu_subformat=$subformat
    case $subformat in
        vmfs | vmfsThin) qemu_subformat=monolithicFlat ;;
    esac
    qemu-img convert -f raw -O vmdk -o "subformat=$qemu_subformat" "$build/fs.raw" "$path"

    local writes=(
        -c "write -P 0x5a 0 512"
        -c "write -P 0xa5 $((bytes - 512)) 512"
        -c "write -P 0xc3 $((bytes * 3 / 4 / 65536 * 65536 - 1536)) 4096"
    )
    if is_split_subformat "$subformat"; then
        if ((bytes <= QEMU_SPLIT_BYTES)); then
            fail "make_ext4_disk: a $subformat disk needs more than 2 GiB to have two extents, got $size"
        fi
        writes+=(-c "write -P 0x3c $((QEMU_SPLIT_BYTES - 512)) 1024")
    fi
    qemu-io -f vmdk "${writes[@]}" "$path" >/dev/null

    case $subformat in
        vmfs | vmfsThin) convert_flat_to_vmfs "$path" "$subformat" ;;
    esac
    rm -rf "$build"
}

# Rewrites the descriptor of a monolithicFlat disk made by qemu-img into a vmfs or vmfsThin one:
# createType changes and the extent line `RW N FLAT "x-flat.vmdk" 0` becomes `RW N VMFS "x-flat.vmdk"`.
# vmfsThin also gets ddb.thinProvisioned = "1".
convert_flat_to_vmfs() {
    local descriptor=$1 create_type=$2
    sed -i -e "s/^createType=\"monolithicFlat\"\$/createType=\"$create_type\"/" \
        -e 's/^\(RW [0-9]*\) FLAT \("[^"]*"\) 0$/\1 VMFS \2/' "$descriptor"
    if [[ $create_type == vmfsThin ]]; then
        sed -i -e '/^ddb\.adapterType = /a ddb.thinProvisioned = "1"' "$descriptor"
        grep -q '^ddb.thinProvisioned = "1"$' "$descriptor" ||
            fail "convert_flat_to_vmfs: could not add ddb.thinProvisioned to $descriptor"
    fi
    grep -q "^createType=\"$create_type\"\$" "$descriptor" ||
        fail "convert_flat_to_vmfs: createType of $descriptor was not rewritten to $create_type"
    grep -q '^RW [0-9]* VMFS "[^"]*"$' "$descriptor" ||
        fail "convert_flat_to_vmfs: extent line of $descriptor was not rewritten to a VMFS extent"
}

# Prints the path of a descriptor that qemu-img can open for DISK. qemu-img 7.2 rejects a vmfsThin
# descriptor ("Unsupported image type"), so for vmfsThin this writes a copy with createType="vmfs" that
# and names the extent files by absolute path, in a folder outside the disk's folder. A vmfsThin
# descriptor differs from a vmfs one only by that type (and ddb.thinProvisioned), so qemu reads the
# same data through the copy.
qemu_view_of() {
    local disk=$1
    if ! read_descriptor "$disk" | grep '^createType="vmfsThin"' >/dev/null; then
        echo "$disk"
        return
    fi
    local view_dir disk_dir
    view_dir="$TEST_TMP/qemu-view/$(basename "$disk" .vmdk)"
    disk_dir=$(cd "$(dirname "$disk")" && pwd)
    mkdir -p "$view_dir"
    read_descriptor "$disk" | sed -e 's/^createType="vmfsThin"$/createType="vmfs"/' \
        -e "s|^\\(RW [0-9]* VMFS \\)\"\\([^/\"][^\"]*\\)\"|\\1\"$disk_dir/\\2\"|" >"$view_dir/view.vmdk"
    echo "$view_dir/view.vmdk"
}

# Exports the guest data of DISK into the raw file OUT with qemu-img. On an encrypted disk qemu
# reads the ciphertext as data.
export_raw() {
    local view
    view=$(qemu_view_of "$1")
    qemu-img convert -f vmdk -O raw "$view" "$2" ||
        fail "qemu-img convert of $1 (through $view) to raw failed"
}

# Prints how many times the plaintext marker occurs in FILE. Reads only the data ranges of the file
# (SEEK_DATA), because grep needs seconds for the holes of a 2 GiB sparse extent.
count_marker() {
    "$PYTHON" - "$1" "$PLAINTEXT_MARKER" <<'PY'
import errno, os, sys

CHUNK = 1 << 20
path, marker = sys.argv[1], sys.argv[2].encode()
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
count = 0
offset = 0
while offset < size:
    try:
        start = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as error:
        if error.errno == errno.ENXIO:
            break
        raise
    end = os.lseek(fd, start, os.SEEK_HOLE)
    # Chunks overlap by len(marker) - 1 bytes, so a marker across a chunk border is counted once.
    position = start
    while position < end:
        data = os.pread(fd, min(CHUNK + len(marker) - 1, end - position), position)
        count += data.count(marker)
        position += CHUNK
    offset = end
print(count)
PY
}

# Fails if any of the files contains the plaintext marker.
marker_absent() {
    local file count
    for file in "$@"; do
        count=$(count_marker "$file")
        if [[ $count != 0 ]]; then
            fail "expected no plaintext marker in $file after encryption, found it $count times"
        fi
    done
}

# Compares the raw export of a disk before encryption (PLAIN_RAW) with the raw export after
# encryption (CIPHER_RAW), 512-byte unit by unit. Every unit that was not all zero must differ and
# must not have become all zero. Every all-zero unit must still be all zero, because vmcrypt stores
# all-zero plaintext units as zeros.
units_changed() {
    "$PYTHON" - "$1" "$2" <<'PY' || fail "units_changed found units that encryption did not handle as the on-disk rules say (see above)"
import errno, os, sys

UNIT = 512
ZERO_UNIT = bytes(UNIT)
CHUNK = 1 << 20

def data_ranges(fd, size):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end

plain_path, cipher_path = sys.argv[1], sys.argv[2]
plain_fd = os.open(plain_path, os.O_RDONLY)
cipher_fd = os.open(cipher_path, os.O_RDONLY)
size = os.fstat(plain_fd).st_size
if os.fstat(cipher_fd).st_size != size:
    sys.exit(f"raw exports differ in size: {plain_path} has {size} bytes, "
             f"{cipher_path} has {os.fstat(cipher_fd).st_size}")

ranges = sorted(list(data_ranges(plain_fd, size)) + list(data_ranges(cipher_fd, size)))
merged = []
for start, end in ranges:
    start = start // UNIT * UNIT
    if merged and start <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], end)
    else:
        merged.append([start, end])

nonzero_units = unchanged = became_zero = zero_not_kept = 0
examples = []
for start, end in merged:
    offset = start
    while offset < end:
        length = min(CHUNK, end - offset)
        plain = os.pread(plain_fd, length, offset)
        cipher = os.pread(cipher_fd, length, offset)
        for position in range(0, len(plain), UNIT):
            plain_unit = plain[position:position + UNIT]
            cipher_unit = cipher[position:position + UNIT]
            sector = (offset + position) // UNIT
            if plain_unit == ZERO_UNIT[:len(plain_unit)]:
                if cipher_unit != plain_unit:
                    zero_not_kept += 1
                    examples.append(f"sector {sector}: all-zero plaintext unit is not zero after encryption")
            else:
                nonzero_units += 1
                if cipher_unit == plain_unit:
                    unchanged += 1
                    examples.append(f"sector {sector}: unit unchanged by encryption")
                elif cipher_unit == ZERO_UNIT[:len(cipher_unit)]:
                    became_zero += 1
                    examples.append(f"sector {sector}: non-zero unit became all zero")
        offset += length

if nonzero_units == 0:
    sys.exit(f"{plain_path} has no non-zero unit, so the comparison proves nothing")
if unchanged or became_zero or zero_not_kept:
    print(f"{unchanged} of {nonzero_units} non-zero units unchanged, {became_zero} became zero, "
          f"{zero_not_kept} zero units not kept zero; first cases:", file=sys.stderr)
    for example in examples[:10]:
        print("  " + example, file=sys.stderr)
    sys.exit(1)
PY
}

# Decrypts a sample of the ciphertext units of CIPHER_RAW independently of vmcrypt and compares them
# with PLAIN_RAW. The DEK is unwrapped (AES key wrap, RFC 3394) from the first key slot of
# DESCRIPTOR_FILE that opens with the KEK in KEK_FILE (32 raw bytes or 64 hex digits), and each unit
# is decrypted with AES-256-XTS, tweak = guest sector as a 64-bit little-endian number padded to
# 16 bytes. Needs the python3 "cryptography" module, and without it the check is skipped with a note.
verify_xts_sample() {
    local plain_raw=$1 cipher_raw=$2 descriptor_file=$3 kek_file=$4
    if ! "$PYTHON" -c 'import cryptography' 2>/dev/null; then
        note "python3 module cryptography is missing, so the independent AES-XTS check is skipped"
        return 0
    fi
    "$PYTHON" - "$plain_raw" "$cipher_raw" "$descriptor_file" "$kek_file" <<'PY' || fail "independent AES-256-XTS decryption of $cipher_raw does not match $plain_raw (see above)"
import base64, errno, os, re, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

UNIT = 512
ZERO_UNIT = bytes(UNIT)
SAMPLE_UNITS = 400

plain_path, cipher_path, descriptor_path, kek_path = sys.argv[1:5]
kek_bytes = open(kek_path, "rb").read()
if len(kek_bytes) == 32:
    kek = kek_bytes
else:
    kek = bytes.fromhex(kek_bytes.decode("ascii").strip())
if len(kek) != 32:
    sys.exit(f"{kek_path}: expected a 256-bit KEK, got {len(kek)} bytes")

descriptor = open(descriptor_path, "rb").read().decode("utf-8", "replace")
slots = re.findall(r'^ddb\.vmcrypt\.keySlot\.\d+\s*=\s*"([^"]*)"', descriptor, re.M)
if not slots:
    sys.exit(f"{descriptor_path}: no ddb.vmcrypt.keySlot line found")
dek = None
for slot in slots:
    fields = dict(item.split("=", 1) for item in slot.split(";") if "=" in item)
    if "dek" not in fields:
        continue
    try:
        dek = aes_key_unwrap(kek, base64.b64decode(fields["dek"]))
        break
    except (InvalidUnwrap, ValueError):
        continue
if dek is None:
    sys.exit(f"no key slot of {descriptor_path} unwraps with the KEK in {kek_path}: {slots}")
if len(dek) != 64:
    sys.exit(f"unwrapped DEK has {len(dek)} bytes, expected 64 (AES-256-XTS)")

def data_ranges(fd, size):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end

plain_fd = os.open(plain_path, os.O_RDONLY)
cipher_fd = os.open(cipher_path, os.O_RDONLY)
size = os.fstat(plain_fd).st_size

# The sample: the first non-zero units of each data range and the last unit of the disk.
sectors = []
for start, end in data_ranges(plain_fd, size):
    taken = 0
    for offset in range(start // UNIT * UNIT, end, UNIT):
        if os.pread(plain_fd, UNIT, offset) != ZERO_UNIT:
            sectors.append(offset // UNIT)
            taken += 1
            if taken >= 40:
                break
sectors = sorted(set(sectors))[:SAMPLE_UNITS] + [size // UNIT - 1]

mismatches = []
for sector in sorted(set(sectors)):
    plain = os.pread(plain_fd, UNIT, sector * UNIT)
    cipher = os.pread(cipher_fd, UNIT, sector * UNIT)
    if plain == ZERO_UNIT:
        continue
    tweak = sector.to_bytes(16, "little")
    decryptor = Cipher(algorithms.AES(dek), modes.XTS(tweak)).decryptor()
    if decryptor.update(cipher) + decryptor.finalize() != plain:
        mismatches.append(sector)
if mismatches:
    sys.exit(f"{len(mismatches)} of {len(set(sectors))} sampled units do not decrypt to the plaintext "
             f"with tweak = guest sector; first sectors: {mismatches[:10]}")
PY
}

# Prints the value of the first key named KEY found in the JSON document in FILE (breadth first),
# or fails when FILE is not one JSON document or has no such key.
json_value() {
    "$PYTHON" - "$1" "$2" <<'PY' || fail "expected a JSON document with a \"$2\" key in $1, got: $(head -c 2000 "$1")"
import json, sys

path, key = sys.argv[1], sys.argv[2]
try:
    with open(path) as file:
        document = json.load(file)
except json.JSONDecodeError as error:
    sys.exit(f"not valid JSON: {error}")
queue = [document]
while queue:
    item = queue.pop(0)
    if isinstance(item, dict):
        if key in item:
            value = item[key]
            print(value if isinstance(value, str) else json.dumps(value))
            sys.exit(0)
        queue.extend(item.values())
    elif isinstance(item, list):
        queue.extend(item)
sys.exit(f"no key {key}")
PY
}

# Fails unless the inspect --json output in FILE reports an unfinished OPERATION: its state is one of
# STATES (space-separated) and it names the journal file. The state can still be the one before the
# operation, when vmcrypt stopped after creating the journal but before updating the descriptor.
expect_inspect_unfinished() {
    local json_file=$1 operation=$2 states=$3
    local state
    state=$(json_value "$json_file" state)
    if [[ " $states " != *" $state "* ]]; then
        fail "expected inspect --json of a disk with an unfinished $operation to report a state of ($states), got \"$state\""
    fi
    if ! grep -qF '.vmcrypt-journal' "$json_file"; then
        fail "expected inspect --json of a disk with an unfinished $operation to name its journal, got: $(cat "$json_file")"
    fi
}

# Prints the value of ddb.vmcrypt.NAME from the descriptor text in FILE, or nothing.
vmcrypt_field() {
    sed -n -e "s/^ddb\\.vmcrypt\\.$2 *= *\"\\(.*\\)\"\$/\\1/p" "$1" | head -n 1
}

# Prints the value of FIELD in the key slot value SLOT ("type=keystore;kek=<uuid>;..."), or nothing.
slot_field() {
    local item
    local -a items
    IFS=';' read -r -a items <<<"$1"
    for item in "${items[@]}"; do
        if [[ $item == "$2="* ]]; then
            echo "${item#*=}"
            return
        fi
    done
}

# Fails unless the descriptor text in AFTER_FILE carries the vmcrypt record of an encrypted disk and,
# with its ddb.vmcrypt.* lines removed, equals the descriptor text in BEFORE_FILE line for line.
check_encrypted_descriptor() {
    local before=$1 after=$2 expected_first_slot_type=$3
    local field expected value
    for field in version:1 state:encrypted cipher:aes-xts-plain64 dekBits:512 unitSize:512 \
        tweak:guest-sector zeroUnits:plain; do
        expected=${field#*:}
        value=$(vmcrypt_field "$after" "${field%%:*}")
        if [[ $value != "$expected" ]]; then
            fail "expected ddb.vmcrypt.${field%%:*} = \"$expected\" in the descriptor after encrypt, got \"$value\":
$(cat "$after")"
        fi
    done
    value=$(vmcrypt_field "$after" keySlot.0)
    if [[ $(slot_field "$value" type) != "$expected_first_slot_type" ]]; then
        fail "expected ddb.vmcrypt.keySlot.0 to have type=$expected_first_slot_type, got \"$value\""
    fi
    value=$(vmcrypt_field "$after" mac)
    if [[ $value != hmac-sha256:?* ]]; then
        fail "expected ddb.vmcrypt.mac = \"hmac-sha256:<base64>\", got \"$value\""
    fi
    if ! diff <(grep -v '^ddb\.vmcrypt\.' "$after") "$before" >"$TEST_TMP/descriptor.diff"; then
        fail "descriptor lines that vmcrypt does not own changed during encrypt (< after, > before):
$(cat "$TEST_TMP/descriptor.diff")"
    fi
}

# Prints the allocated bytes of FILE.
allocated_bytes() {
    echo $(($(stat -c '%b * %B' "$1")))
}

# Prints "path size allocated-bytes" for every extent file of DISK.
extent_sizes() {
    local file
    while read -r file; do
        echo "$file $(stat -c %s "$file") $(allocated_bytes "$file")"
    done < <(extent_files "$1")
}

# Fails if an extent file changed size or, beyond 1 MiB of slack, grew its allocation: encryption
# rewrites guest data in place and stores all-zero units as zeros, so sparse and thin disks stay thin.
expect_extents_not_grown() {
    local before_file=$1 after_file=$2
    local path size allocated after_size after_allocated
    while read -r path size allocated; do
        read -r after_size after_allocated < <(awk -v p="$path" '$1 == p { print $2, $3 }' "$after_file")
        if [[ $after_size != "$size" ]]; then
            fail "extent $path changed size during encrypt: $size bytes before, ${after_size:-none} after"
        fi
        if ((after_allocated > allocated + 1048576)); then
            fail "extent $path grew its allocation during encrypt from $allocated to $after_allocated bytes;" \
                "all-zero units must stay holes or zeros, so a thin disk stays thin"
        fi
    done <"$before_file"
}

# Fails unless `qemu-img check` finds no errors in DISK. qemu-img 7.2 also checks monolithicFlat,
# twoGbMaxExtentFlat and vmfs disks and returns 0 for them.
expect_qemu_check_clean() {
    local view code=0
    view=$(qemu_view_of "$1")
    qemu-img check "$view" >"$TEST_TMP/check.out" 2>&1 || code=$?
    if [[ $code != 0 ]]; then
        fail "expected qemu-img check of $1 (through $view) to be clean $2, exit code $code:
$(cat "$TEST_TMP/check.out")"
    fi
}

# Encrypts and decrypts an ext4 disk of SUBFORMAT with the default key store and checks the result
# against qemu-img, qemu-io, e2fsck and debugfs. See the checks below for what must hold.
run_roundtrip() {
    local subformat=$1
    local size=64M
    if is_split_subformat "$subformat"; then
        size=2100M
    fi
    local dir="$TEST_TMP/disk"
    local disk="$dir/disk.vmdk"
    mkdir "$dir"
    make_ext4_disk "$subformat" "$disk" "$size"

    # The plaintext reference: the guest data, the descriptor text and every file's contents.
    export_raw "$disk" "$TEST_TMP/plain.raw"
    e2fsck -fn "$TEST_TMP/plain.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
        fail "test setup: e2fsck of the freshly made disk failed: $(cat "$TEST_TMP/e2fsck.out")"
    read_descriptor "$disk" >"$TEST_TMP/descriptor.before"
    IGNORE_DESCRIPTOR_TAIL=1 hash_disk_files "$dir" >"$TEST_TMP/hashes.before"
    extent_sizes "$disk" >"$TEST_TMP/extents.before"
    local marker_lines=0 extent
    while read -r extent; do
        marker_lines=$((marker_lines + $(count_marker "$extent")))
    done < <(extent_files "$disk")
    if ((marker_lines == 0)); then
        fail "test setup: the plaintext marker is missing from the extents of the new $subformat disk"
    fi

    expect_exit 0 "$VMCRYPT" inspect --json "$disk"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    local state
    state=$(json_value "$TEST_TMP/inspect.json" state)
    if [[ $state == encrypted ]]; then
        fail "expected inspect --json of the plaintext $subformat disk to report another state than encrypted"
    fi

    expect_exit 0 "$VMCRYPT" encrypt "$disk"

    expect_qemu_check_clean "$disk" "after encrypt"
    read_descriptor "$disk" >"$TEST_TMP/descriptor.encrypted"
    check_encrypted_descriptor "$TEST_TMP/descriptor.before" "$TEST_TMP/descriptor.encrypted" keystore
    while read -r extent; do
        marker_absent "$extent"
    done < <(extent_files "$disk")
    extent_sizes "$disk" >"$TEST_TMP/extents.after"
    expect_extents_not_grown "$TEST_TMP/extents.before" "$TEST_TMP/extents.after"
    if [[ -e $disk.vmcrypt-journal ]]; then
        fail "expected no journal after a finished encrypt, found $disk.vmcrypt-journal"
    fi

    export_raw "$disk" "$TEST_TMP/cipher.raw"
    units_changed "$TEST_TMP/plain.raw" "$TEST_TMP/cipher.raw"
    local kek_id
    kek_id=$(slot_field "$(vmcrypt_field "$TEST_TMP/descriptor.encrypted" keySlot.0)" kek)
    if [[ ! -f $VMCRYPT_KEYSTORE/$kek_id.kek ]]; then
        fail "expected the KEK named by key slot 0 at $VMCRYPT_KEYSTORE/$kek_id.kek; key store holds: $(ls -la "$VMCRYPT_KEYSTORE")"
    fi
    verify_xts_sample "$TEST_TMP/plain.raw" "$TEST_TMP/cipher.raw" "$TEST_TMP/descriptor.encrypted" \
        "$VMCRYPT_KEYSTORE/$kek_id.kek"
    rm -f "$TEST_TMP/cipher.raw"

    expect_exit 0 "$VMCRYPT" inspect "$disk"
    if ! grep -qi encrypted <<<"$LAST_STDOUT"; then
        fail "expected the inspect report of the encrypted disk to say encrypted, got: $LAST_STDOUT"
    fi
    expect_exit 0 "$VMCRYPT" inspect --json "$disk"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    json_value "$TEST_TMP/inspect.json" schema >/dev/null
    state=$(json_value "$TEST_TMP/inspect.json" state)
    if [[ $state != encrypted ]]; then
        fail "expected inspect --json to report state \"encrypted\", got \"$state\""
    fi

    expect_exit 0 "$VMCRYPT" decrypt "$disk"

    local view code=0
    view=$(qemu_view_of "$disk")
    qemu-img compare -f vmdk -F raw "$view" "$TEST_TMP/plain.raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    if [[ $code != 0 ]]; then
        fail "expected qemu-img compare to find the decrypted disk identical to the plaintext, exit code $code:
$(cat "$TEST_TMP/compare.out")"
    fi
    expect_qemu_check_clean "$disk" "after decrypt"

    export_raw "$disk" "$TEST_TMP/decrypted.raw"
    e2fsck -fn "$TEST_TMP/decrypted.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
        fail "expected e2fsck -fn of the decrypted disk to pass:
$(cat "$TEST_TMP/e2fsck.out")"
    debugfs -R "dump /marker.txt $TEST_TMP/marker.txt" "$TEST_TMP/decrypted.raw" >/dev/null 2>&1
    make_marker_tree "$TEST_TMP/expected-tree"
    cmp -s "$TEST_TMP/marker.txt" "$TEST_TMP/expected-tree/marker.txt" ||
        fail "marker.txt read back from the decrypted file system differs from the file written by mkfs.ext4"

    read_descriptor "$disk" >"$TEST_TMP/descriptor.after"
    if ! cmp -s "$TEST_TMP/descriptor.before" "$TEST_TMP/descriptor.after"; then
        fail "expected the descriptor after decrypt to equal the original byte for byte:
$(diff "$TEST_TMP/descriptor.before" "$TEST_TMP/descriptor.after" || true)"
    fi
    IGNORE_DESCRIPTOR_TAIL=1 expect_contents_unchanged "$dir" "$TEST_TMP/hashes.before" "encrypt then decrypt"
}

# Creates a 64 MiB monolithicSparse ext4 disk at PATH and exports its guest data to the raw file RAW.
make_small_disk() {
    local path=$1 raw=$2
    make_ext4_disk monolithicSparse "$path" 64M
    export_raw "$path" "$raw"
}

# Creates a VMDK of SIZE in SUBFORMAT at PATH whose first DATA_SIZE bytes are random, and keeps the
# plaintext in the raw file RAW.
make_random_disk() {
    local subformat=$1 path=$2 size=$3 data_size=$4 raw=$5
    truncate -s "$(numfmt --from=iec "$size")" "$raw"
    head -c "$(numfmt --from=iec "$data_size")" /dev/urandom | dd of="$raw" conv=notrunc status=none
    qemu-img convert -f raw -O vmdk -o "subformat=$subformat" "$raw" "$path"
}

# Fails unless qemu-img compare finds the guest data of DISK identical to the raw file RAW.
expect_same_as_raw() {
    local disk=$1 raw=$2 context=$3
    local view code=0
    view=$(qemu_view_of "$disk")
    qemu-img compare -f vmdk -F raw "$view" "$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    if [[ $code != 0 ]]; then
        fail "expected qemu-img compare to find $disk identical to $raw $context, exit code $code:
$(cat "$TEST_TMP/compare.out")
$(describe_mismatch "$disk" "$raw")"
    fi
}

# Prints the byte ranges in which the guest data of DISK differs from the raw file RAW (at most 10).
describe_mismatch() {
    local exported_raw="$TEST_TMP/mismatch.raw"
    qemu-img convert -f vmdk -O raw "$(qemu_view_of "$1")" "$exported_raw" 2>/dev/null || return 0
    "$PYTHON" - "$exported_raw" "$2" <<'PY'
import sys

UNIT = 512
first, second = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
ranges = []
offset = 0
while len(ranges) <= 10:
    a, b = first.read(1 << 20), second.read(1 << 20)
    if not a and not b:
        break
    if a != b:
        for position in range(0, max(len(a), len(b)), UNIT):
            if a[position:position + UNIT] != b[position:position + UNIT]:
                start = offset + position
                if ranges and ranges[-1][1] == start:
                    ranges[-1][1] = start + UNIT
                else:
                    ranges.append([start, start + UNIT])
    offset += max(len(a), len(b))
print("differing byte ranges (offset, length): " +
      ", ".join(f"({start}, {end - start})" for start, end in ranges[:10]))
PY
    rm -f "$exported_raw"
}

# Returns 0 while process PID runs (exists and is not a zombie).
process_running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Starts vmcrypt with the arguments in the background, with stdout and stderr in the files
# $TEST_TMP/background.stdout and .stderr, and sets BACKGROUND_PID. Bash makes background commands
# of a script ignore SIGINT, so the subshell restores the default first, letting tests send SIGINT.
start_vmcrypt_background() {
    (
        trap - INT
        exec "$VMCRYPT" "$@"
    ) >"$TEST_TMP/background.stdout" 2>"$TEST_TMP/background.stderr" &
    BACKGROUND_PID=$!
    register_background_pid "$BACKGROUND_PID"
}

# Waits for the background vmcrypt started last and sets BACKGROUND_EXIT to its exit code
# (128 + signal number when a signal ended it).
wait_vmcrypt_background() {
    BACKGROUND_EXIT=0
    # Without the redirection bash reports "Killed" for a background command ended by SIGKILL.
    wait "$BACKGROUND_PID" 2>/dev/null || BACKGROUND_EXIT=$?
    forget_background_pid "$BACKGROUND_PID"
}

# Runs vmcrypt with the arguments in the background and kills it with SIGKILL as soon as JOURNAL
# exists. Returns 0 when the kill left an unfinished operation with its journal behind, and 1 when
# vmcrypt finished before the journal could be seen. Fails the test when vmcrypt exits with an error.
kill_when_journal_appears() {
    local journal=$1
    shift
    start_vmcrypt_background "$@"
    while [[ ! -e $journal ]] && process_running "$BACKGROUND_PID"; do
        sleep 0.002
    done
    kill -KILL "$BACKGROUND_PID" 2>/dev/null || true
    wait_vmcrypt_background
    if [[ $BACKGROUND_EXIT != 0 && $BACKGROUND_EXIT != 137 ]]; then
        fail "vmcrypt $* exited with $BACKGROUND_EXIT before it could be killed: $(cat "$TEST_TMP/background.stderr")"
    fi
    [[ $BACKGROUND_EXIT == 137 && -e $journal ]]
}

# Opens DISK (of FORMAT, default vmdk) read-write in qemu-io, which holds QEMU's image locks (open
# file description locks) on every file of the disk while it waits for commands on stdin, a FIFO
# here. Returns when the image is open and the locks are visible to qemu-img.
hold_image_open() {
    local disk=$1 format=${2:-vmdk}
    local fifo="$TEST_TMP/qemu-io.fifo"
    rm -f "$fifo"
    mkfifo "$fifo"
    qemu-io -f "$format" "$disk" <"$fifo" >"$TEST_TMP/qemu-io.out" 2>&1 &
    HOLDER_PID=$!
    register_background_pid "$HOLDER_PID"
    exec {HOLDER_FD}>"$fifo"

    # qemu-io prints its prompt once the image is open.
    for _ in $(seq 1 200); do
        if grep -q 'qemu-io>' "$TEST_TMP/qemu-io.out"; then
            break
        fi
        process_running "$HOLDER_PID" || fail "test setup: qemu-io could not open $disk: $(cat "$TEST_TMP/qemu-io.out")"
        sleep 0.05
    done
    if qemu-img info "$disk" >/dev/null 2>"$TEST_TMP/qemu-img-info.err" ||
        ! grep -q 'lock' "$TEST_TMP/qemu-img-info.err"; then
        fail "test setup: expected qemu-img info to report QEMU's image lock on $disk while qemu-io holds it: $(cat "$TEST_TMP/qemu-img-info.err")"
    fi
}

# Ends the qemu-io started by hold_image_open: closing the FIFO ends its input, so it exits.
release_image() {
    exec {HOLDER_FD}>&-
    for _ in $(seq 1 100); do
        process_running "$HOLDER_PID" || break
        sleep 0.05
    done
    kill -KILL "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" 2>/dev/null || true
    forget_background_pid "$HOLDER_PID"
}

# Writes VALUE as a little-endian integer of WIDTH bytes at byte OFFSET of FILE, in place.
write_le_integer() {
    "$PYTHON" - "$@" <<'PY'
import os, sys

path, offset, width, value = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
fd = os.open(path, os.O_WRONLY)
os.pwrite(fd, value.to_bytes(width, "little"), offset)
os.close(fd)
PY
}

# Prints the little-endian integer of WIDTH bytes at byte OFFSET of FILE.
read_le_integer() {
    "$PYTHON" - "$@" <<'PY'
import os, sys

path, offset, width = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
print(int.from_bytes(os.pread(fd, width, offset), "little"))
os.close(fd)
PY
}

# Prints the sector count of the newest journal entry's metadata write, or with DISK_FILE and SECTORS
# writes its first SECTORS sectors into DISK_FILE, as a crash in the middle of that write leaves it.
# Usage: pending_write JOURNAL [DISK_FILE SECTORS]
pending_write() {
    "$PYTHON" - "$@" <<'PY'
import os, struct, sys
journal = open(sys.argv[1], "rb").read()
slot_size = struct.unpack_from("<Q", journal, 36)[0]
entries = []
for slot in (0, 1):
    entry = 8192 + slot * slot_size
    if journal[entry:entry + 8] != b"\0" * 8 and len(journal) >= entry + 512:
        entries.append((struct.unpack_from("<Q", journal, entry + 8)[0], entry))
entry = max(entries)[1]
length, file_index, offset = struct.unpack_from("<QQQ", journal, entry + 48)
if len(sys.argv) == 2:
    print((length + 511) // 512)
    sys.exit()
disk_path, sectors = sys.argv[2], int(sys.argv[3])
new = journal[entry + 512:entry + 512 + length]
fd = os.open(disk_path, os.O_RDWR)
old_size = os.fstat(fd).st_size
if offset == 0 and old_size > len(new):
    new = new + bytes(old_size - len(new))  # vmcrypt pads a shrinking descriptor file with NULs
os.pwrite(fd, new[:sectors * 512], offset)
os.close(fd)
PY
}
