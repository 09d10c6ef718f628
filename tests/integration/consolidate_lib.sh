# Helpers for the consolidate-snapshots tests, sourced after lib.sh.

# Makes a snapshot chain in folder DIR: a base disk base.vmdk of SIZE in SUBFORMAT (a qemu-img
# subformat; OPTIONS are extra qemu-img -o options such as zeroed_grain=on), then DEPTH hosted sparse
# deltas base-000001.vmdk ... named as VMware Workstation names them, each made by
# `qemu-img create -b` and written by qemu-io. Every layer writes its own pattern over data of the base
# and of the layer below, into grains the base never allocated, across grain boundaries and at the
# last sectors. It also zeroes with `write -z` a whole grain that the layer below wrote (a zeroed
# grain, GTE 1) and a partial range. Prints the path of the top.
make_snapshot_chain() {
    local dir=$1 subformat=$2 size=$3 depth=$4 options=${5:-}
    local bytes top layer pattern
    bytes=$(numfmt --from=iec "$size")
    mkdir -p "$dir"
    (
        cd "$dir"
        qemu-img create -q -f vmdk -o "subformat=$subformat${options:+,$options}" base.vmdk "$size"
        qemu-io -f vmdk -c "write -P 0x11 0 4M" -c "write -P 0x12 $((bytes / 2)) 1M" \
            -c "write -P 0x13 $((bytes - 512)) 512" base.vmdk >/dev/null
        top=base.vmdk
        for layer in $(seq 1 "$depth"); do
            local name
            name=$(printf 'base-%06d.vmdk' "$layer")
            qemu-img create -q -f vmdk -o "zeroed_grain=on" -b "$top" -F vmdk "$name"
            pattern=$((0x20 + layer))
            qemu-io -f vmdk \
                -c "write -P $pattern $((layer * 65536)) 65536" \
                -c "write -z $(((layer - 1) * 65536)) 65536" \
                -c "write -P $((pattern + 32)) $((layer * 1048576 + 61440)) 8192" \
                -c "write -P $((pattern + 64)) $((8388608 + layer * 196608)) 69632" \
                -c "write -z $((8388608 + (layer - 1) * 196608)) 65536" \
                -c "write -P $((pattern + 96)) $((bytes / 2 + layer * 4096)) 512" \
                -c "write -z $((bytes / 2 + 65536 + layer * 512)) 1024" \
                -c "write -P $((pattern + 128)) $((bytes - 512 * (layer % 4 + 1))) 512" \
                "$name" >/dev/null
            top=$name
        done
        echo "$dir/$top"
    )
}

# Exports the guest view of DISK (through its whole chain) into the raw file OUT.
export_chain_raw() {
    qemu-img convert -f vmdk -O raw "$1" "$2" || fail "qemu-img convert of the chain top $1 to raw failed"
}

# Fails unless qemu-img compare finds DISK identical to the raw file RAW and qemu-img check finds
# DISK clean.
expect_disk_equals_raw() {
    local disk=$1 raw=$2 context=$3
    expect_same_as_raw "$disk" "$raw" "$context"
    expect_qemu_check_clean "$disk" "$context"
}

# Fails unless the chain's base can be encrypted and decrypted by vmcrypt and then still equals RAW.
expect_encrypt_roundtrip() {
    local disk=$1 raw=$2
    expect_exit 0 "$VMCRYPT" encrypt "$disk"
    expect_qemu_check_clean "$disk" "after encrypt of the consolidated disk"
    expect_exit 0 "$VMCRYPT" decrypt "$disk"
    expect_disk_equals_raw "$disk" "$raw" "after encrypt and decrypt of the consolidated disk"
}

# Fails when any of the given files still exists.
expect_files_gone() {
    local file
    for file in "$@"; do
        [[ ! -e $file ]] || fail "expected $file to be removed by consolidate-snapshots"
    done
}

# Prints the CID of DISK's descriptor.
descriptor_cid() {
    read_descriptor "$1" | sed -n 's/^CID=\([0-9a-fA-F]*\)\r\?$/\1/p'
}

# Replaces the regular expression PATTERN (Python syntax, multi-line) by REPLACEMENT in the
# descriptor of DISK, embedded (NUL-padded in its area) or separate. Fails when nothing matches.
edit_descriptor() {
    "$PYTHON" - "$@" <<'PY' || fail "edit_descriptor $*: failed"
import re, struct, sys

path, pattern, replacement = sys.argv[1:4]
with open(path, "r+b") as disk:
    header = disk.read(512)
    if header[:4] == b"KDMV":
        offset, size = struct.unpack_from("<QQ", header, 28)
        disk.seek(offset * 512)
        area = disk.read(size * 512)
        text = area.split(b"\0", 1)[0].decode()
    else:
        disk.seek(0)
        text = disk.read().split(b"\0", 1)[0].decode()
    new, count = re.subn(pattern, replacement, text, flags=re.M)
    if count == 0:
        sys.exit(f"{pattern!r} not found in the descriptor of {path}")
    data = new.encode()
    if header[:4] == b"KDMV":
        assert len(data) < size * 512
        disk.seek(offset * 512)
        disk.write(data + bytes(size * 512 - len(data)))
    else:
        disk.seek(0)
        disk.truncate()
        disk.write(data)
PY
}
