#!/usr/bin/env bash
# qcow2 images that encrypt must reject before any write, each with its hint and exit code, and
# inspect reports on qcow2 images of every kind without writing anything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

# Creates a 16 MiB qcow2 image at PATH with data at 0 and 8 MiB; extra arguments go to qemu-img create.
make_image() {
    local path=$1
    shift
    qemu-img create -q -f qcow2 "$@" "$path" 16M
    qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 8M 64k' "$path" >/dev/null
}

# Runs inspect --json on IMAGE into $TEST_TMP/inspect.json and checks that the folder is unchanged.
inspect_json() {
    local image=$1 dir
    dir=$(dirname "$image")
    save_dir_state "$dir" "$TEST_TMP/inspect-state"
    expect_exit 0 "$VMCRYPT" inspect --json "$image"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    expect_exit 0 "$VMCRYPT" inspect "$image"
    expect_dir_unchanged "$dir" "$TEST_TMP/inspect-state" "inspect of $image"
}

# Fails unless the JSON path of the last inspect has the expected value.
expect_inspect() {
    local path=$1 expected=$2 actual
    actual=$(json_path "$TEST_TMP/inspect.json" "$path")
    [[ $actual == "$expected" ]] || fail "expected inspect $path to be $expected, got $actual"
}

# Fails unless `vmcrypt encrypt IMAGE` exits with CODE, names HINT, and leaves the folder unchanged.
expect_encrypt_rejected() {
    local image=$1 code=$2 hint=$3 dir
    dir=$(dirname "$image")
    hash_disk_files "$dir" >"$TEST_TMP/hashes"
    expect_exit "$code" "$VMCRYPT" encrypt "$image"
    expect_stderr_contains "$hint"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of $image"
}

# inspect: layouts and their facts.
dir="$TEST_TMP/inspect"
mkdir "$dir"
make_image "$dir/v3.qcow2"
inspect_json "$dir/v3.qcow2"
expect_inspect format qcow2
expect_inspect qcow2.version 3
expect_inspect qcow2.clusterSize 65536
expect_inspect qcow2.allocation.dataClusters 17
expect_inspect qcow2.encryption none
expect_inspect encryption.state plaintext

make_image "$dir/v2.qcow2" -o compat=0.10,cluster_size=512
inspect_json "$dir/v2.qcow2"
expect_inspect qcow2.version 2
expect_inspect qcow2.clusterSize 512
expect_inspect qcow2.allocation.dataBytes $((1024 * 1024 + 65536))

make_image "$dir/ext.qcow2" -o extended_l2=on,lazy_refcounts=on
inspect_json "$dir/ext.qcow2"
expect_inspect qcow2.extendedL2 true
expect_inspect qcow2.features.incompatible '["extended L2"]'
expect_inspect qcow2.features.compatible '["lazy refcounts"]'

truncate -s 4M "$dir/plain.raw"
qemu-io -f raw -c 'write -P 0x61 0 1M' "$dir/plain.raw" >/dev/null
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$dir/plain.raw" "$dir/zstd.qcow2"
inspect_json "$dir/zstd.qcow2"
expect_inspect qcow2.compressionType zstd
expect_inspect qcow2.allocation.compressedClusters 16

qemu_img_retrying create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 "$dir/luks.qcow2" 16M
inspect_json "$dir/luks.qcow2"
expect_inspect qcow2.encryption qemu-luks
expect_inspect qcow2.luksArea.offset 262144
expect_inspect qcow2.luksArea.length 2068480
expect_inspect encryption.by qemu

qemu-img create -q -f qcow2 --object "$QEMU_SECRET_OBJECT" -o encrypt.format=aes,encrypt.key-secret=sec0 "$dir/aes.qcow2" 16M
inspect_json "$dir/aes.qcow2"
expect_inspect qcow2.encryption legacy-aes
expect_inspect qcow2.insecure true
grep -q INSECURE <<<"$LAST_STDOUT" || fail "expected the text report of a legacy AES image to say INSECURE, got: $LAST_STDOUT"

# Backing chain: base <- mid <- top; top names both parents, base names its child.
dir="$TEST_TMP/chain"
mkdir "$dir"
make_image "$dir/base.qcow2"
(cd "$dir" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2)
qemu-io -f qcow2 -c 'write -P 0x77 1M 64k' "$dir/top.qcow2" >/dev/null
inspect_json "$dir/top.qcow2"
expect_inspect qcow2.backingFile mid.qcow2
expect_inspect qcow2.backingFormat qcow2
expect_inspect parents '["mid.qcow2", "base.qcow2"]'
expect_encrypt_rejected "$dir/top.qcow2" 3 "merge the chain first with: vmcrypt consolidate-snapshots $dir/top.qcow2"
expect_encrypt_rejected "$dir/base.qcow2" 3 "merge them first with: vmcrypt consolidate-snapshots mid.qcow2"

# Internal snapshots.
dir="$TEST_TMP/snapshots"
mkdir "$dir"
make_image "$dir/s.qcow2"
qemu-img snapshot -c before-update "$dir/s.qcow2"
inspect_json "$dir/s.qcow2"
expect_inspect qcow2.snapshots.0.name before-update
expect_encrypt_rejected "$dir/s.qcow2" 3 "delete them first with: vmcrypt consolidate-snapshots $dir/s.qcow2"

# Header bits: dirty, corrupt, an unknown incompatible feature, an external data file.
dir="$TEST_TMP/bits"
mkdir "$dir"
make_image "$dir/dirty.qcow2" -o lazy_refcounts=on
write_be_integer "$dir/dirty.qcow2" 72 8 1
inspect_json "$dir/dirty.qcow2"
expect_inspect qcow2.dirty true
expect_encrypt_rejected "$dir/dirty.qcow2" 3 "qemu-img check -r all"

make_image "$dir/corrupt.qcow2"
write_be_integer "$dir/corrupt.qcow2" 72 8 2
inspect_json "$dir/corrupt.qcow2"
expect_inspect qcow2.corrupt true
expect_encrypt_rejected "$dir/corrupt.qcow2" 3 "corrupt bit"

make_image "$dir/future.qcow2"
write_be_integer "$dir/future.qcow2" 72 8 $((1 << 20))
expect_encrypt_rejected "$dir/future.qcow2" 3 "unknown incompatible features: bit 20"

qemu-img create -q -f qcow2 -o data_file="$dir/external.raw" "$dir/external.qcow2" 16M
inspect_json "$dir/external.qcow2"
expect_inspect qcow2.dataFile "$dir/external.raw"
expect_encrypt_rejected "$dir/external.qcow2" 3 "external data file"

# One data cluster mapped by two L2 entries. qemu-img check -r all only raises its refcount, so the
# hint names a qemu-img convert, and the copy that command makes encrypts.
dir="$TEST_TMP/shared"
mkdir "$dir"
make_image "$dir/shared.qcow2"
"$PYTHON" - "$dir/shared.qcow2" <<'PY'
import struct, sys

with open(sys.argv[1], "r+b") as f:
    header = f.read(104)
    l1_offset = struct.unpack(">Q", header[40:48])[0]
    f.seek(l1_offset)
    l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2_offset)
    first_entry = f.read(8)
    f.seek(l2_offset + 8 * 100)  # guest cluster 100 (6.25 MiB) was unallocated
    f.write(first_entry)
PY
qemu-img check -r all "$dir/shared.qcow2" >/dev/null 2>&1 || true
expect_encrypt_rejected "$dir/shared.qcow2" 3 "overlaps cluster"
expect_stderr_contains "qemu-img check -r all keeps such sharing"
hint=$(sed -n 's/.*copy the image with: \(qemu-img convert [^ ]* [^ ]* [^ ]* [^ ]*\) and use the copy$/\1/p' "$TEST_TMP/last.stderr")
[[ $hint == "qemu-img convert -O qcow2 $dir/shared.qcow2 new.qcow2" ]] || fail "unexpected convert hint: $LAST_STDERR"
(cd "$dir" && $hint)
expect_exit 0 "$VMCRYPT" encrypt "$dir/new.qcow2"

# Encrypted by QEMU: LUKS and the insecure legacy AES.
expect_encrypt_rejected "$TEST_TMP/inspect/luks.qcow2" 3 "QEMU LUKS"
expect_encrypt_rejected "$TEST_TMP/inspect/aes.qcow2" 3 "insecure"

# In use: qemu-io holds QEMU's image lock; encrypt exits 5, inspect still works and writes nothing.
dir="$TEST_TMP/in-use"
mkdir "$dir"
make_image "$dir/busy.qcow2"
hold_image_open "$dir/busy.qcow2" qcow2
expect_encrypt_rejected "$dir/busy.qcow2" 5 "in use"
inspect_json "$dir/busy.qcow2"
release_image
