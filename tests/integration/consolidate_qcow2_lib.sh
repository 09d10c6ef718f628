# Helpers for the qcow2 consolidate-snapshots tests, sourced after lib.sh.

QCOW2_CHAIN_SIZE=64M

# Makes a chain base.qcow2 <- mid.qcow2 <- top.qcow2 in folder DIR (OPTIONS: qemu-img -o options of
# the base, such as compat=0.10). Each layer holds a change of one ext4 file system and qemu-io writes:
#   base: an ext4 file system with compressed clusters (qemu-img convert -c), patterns past it and
#         in the last sector;
#   mid:  a new file in the file system (only the changed 4 KiB blocks), patterns
#         over base data, a compressed cluster, a whole zeroed cluster and a partly zeroed one, and
#         the second-to-last sector;
#   top:  (extended L2, so 2 KiB subclusters) another new file, patterns over base and mid data,
#         zeroed subclusters, a zeroed cluster that the mid compressed, a subcluster over the other
#         compressed one, and the last sector. qemu-io writes compressed clusters only where the layer
#         has none yet.
make_qcow2_chain() {
    local dir=$1 options=${2:-}
    local bytes work
    bytes=$(numfmt --from=iec "$QCOW2_CHAIN_SIZE")
    work="$dir/work"
    mkdir -p "$work"
    make_marker_tree "$work/tree"
    truncate -s "$bytes" "$work/fs.raw"
    mkfs.ext4 -q -F -d "$work/tree" "$work/fs.raw" "$EXT4_FS_SIZE"
    (
        cd "$dir"
        qemu-img convert -c -f raw -O qcow2 ${options:+-o "$options"} work/fs.raw base.qcow2
        qemu-io -f qcow2 -c "write -P 0x11 40M 4M" -c "write -P 0x12 48M 1M" \
            -c "write -P 0x13 $((bytes - 512)) 512" base.qcow2 >/dev/null

        qemu-img convert -f qcow2 -O raw base.qcow2 work/old.raw
        cp --sparse=always work/old.raw work/fs.raw
        debugfs -w -R "write /etc/hostname added-in-mid.txt" work/fs.raw >/dev/null 2>&1
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
        write_changed_blocks work/old.raw work/fs.raw mid.qcow2
        qemu-io -f qcow2 -c "write -P 0x21 40M 65536" -c "write -c -P 0x22 52M 65536" -c "write -c -P 0x25 54M 65536" \
            -c "write -z 42M 65536" -c "write -z $((43 * 1048576 + 4096)) 8192" \
            -c "write -P 0x23 $((48 * 1048576 + 61440)) 8192" -c "write -P 0x24 $((bytes - 1024)) 512" \
            mid.qcow2 >/dev/null

        qemu-img convert -f qcow2 -O raw mid.qcow2 work/old.raw
        cp --sparse=always work/old.raw work/fs.raw
        debugfs -w -R "write /etc/services added-in-top.txt" work/fs.raw >/dev/null 2>&1
        qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2
        write_changed_blocks work/old.raw work/fs.raw top.qcow2
        qemu-io -f qcow2 -c "write -P 0x31 $((40 * 1048576 + 2048)) 4096" -c "write -z $((40 * 1048576 + 8192)) 2048" \
            -c "write -z 52M 65536" -c "write -P 0x34 $((54 * 1048576 + 4096)) 2048" -c "write -P 0x32 $((44 * 1048576 + 512)) 1536" \
            -c "write -z $((48 * 1048576 + 4096)) 2048" -c "write -P 0x33 $((bytes - 512)) 512" \
            top.qcow2 >/dev/null
    )
    rm -rf "$work"
}

# Writes into the qcow2 image LAYER, with qemu-io, every 4 KiB block in which the raw files OLD and
# NEW differ, so that the layer stores only what a guest changed.
write_changed_blocks() {
    "$PYTHON" - "$@" <<'PY' || fail "write_changed_blocks $*: failed"
import os, subprocess, sys, tempfile

old_path, new_path, layer = sys.argv[1:4]
block = 4096
runs = []
with open(old_path, "rb") as old, open(new_path, "rb") as new:
    offset = 0
    while True:
        before, after = old.read(block), new.read(block)
        if not after:
            break
        if before != after:
            if runs and runs[-1][0] + len(runs[-1][1]) == offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + after)
            else:
                runs.append((offset, after))
        offset += block
if not runs:
    sys.exit("no block differs between " + old_path + " and " + new_path)
folder = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(layer)))
commands = []
for index, (offset, data) in enumerate(runs):
    path = os.path.join(folder, f"{index}.bin")
    with open(path, "wb") as chunk:
        chunk.write(data)
    commands += ["-c", f"write -s {path} {offset} {len(data)}"]
subprocess.run(["qemu-io", "-f", "qcow2", *commands, layer], check=True, stdout=subprocess.DEVNULL)
for index in range(len(runs)):
    os.remove(os.path.join(folder, f"{index}.bin"))
os.rmdir(folder)
PY
}

# Fails unless qemu-img compare finds the qcow2 IMAGE identical to the raw file RAW.
expect_qcow2_equals_raw() {
    local image=$1 raw=$2 context=$3 code=0
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "expected qemu-img compare to find $image identical to $raw $context, exit code $code:
$(cat "$TEST_TMP/compare.out")"
}

# Fails unless qemu-img check finds IMAGE without errors and without leaked clusters (exit code 3).
expect_qcow2_check_clean() {
    local image=$1 context=$2 code=0
    qemu-img check -f qcow2 "$image" >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "expected qemu-img check of $image to find no errors and no leaks $context, exit code $code:
$(cat "$TEST_TMP/check.out")"
}

# Fails unless vmcrypt encrypts and decrypts the qcow2 IMAGE and it then still equals RAW, clean.
expect_qcow2_encrypt_roundtrip() {
    local image=$1 raw=$2
    expect_exit 0 "$VMCRYPT" encrypt "$image"
    expect_exit 0 "$VMCRYPT" decrypt "$image"
    expect_qcow2_equals_raw "$image" "$raw" "after encrypt and decrypt of the consolidated image"
    expect_qcow2_check_clean "$image" "after encrypt and decrypt of the consolidated image"
}

# Prints the SHA-256 of every file in DIR, with its name, sorted.
hash_folder() {
    (cd "$1" && sha256sum -- * | sort -k 2)
}
