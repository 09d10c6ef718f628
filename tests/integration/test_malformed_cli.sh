#!/usr/bin/env bash
# Malformed and unsupported disks through the command line: encrypt must exit 3 with one error line
# that names the file, inspect must exit 3 too, and neither may write anything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Hosted sparse header fields (byte offsets in sector 0, little-endian).
VERSION_OFFSET=4
FLAGS_OFFSET=8
CAPACITY_OFFSET=12
GRAIN_SIZE_OFFSET=20
NUM_GTES_PER_GT_OFFSET=44
RGD_OFFSET_OFFSET=48
GD_OFFSET_OFFSET=56

# Creates an 8 MiB monolithicSparse disk at PATH with data in its first 1 MiB (grains 0 to 15).
make_sparse() {
    qemu-img create -q -f vmdk -o subformat=monolithicSparse "$1" 8M
    qemu-io -f vmdk -c 'write -P 0x5a 0 1M' "$1" >/dev/null
}

# Creates an 8 MiB monolithicFlat disk at PATH, with data, and its extent next to it (disk-flat.vmdk).
make_flat() {
    qemu-img create -q -f vmdk -o subformat=monolithicFlat "$1" 8M
    qemu-io -f vmdk -c 'write -P 0x5a 0 1M' "$1" >/dev/null
}

# Prints the byte offset of entry INDEX of the first grain table of the sparse extent FILE, found
# through the primary grain directory (gdOffset), or through the redundant one (rgdOffset) when the
# third argument is "redundant".
first_gt_entry_offset() {
    local directory_field=$GD_OFFSET_OFFSET gd_sector gt_sector
    if [[ ${3:-} == redundant ]]; then
        directory_field=$RGD_OFFSET_OFFSET
    fi
    gd_sector=$(read_le_integer "$1" $directory_field 8)
    gt_sector=$(read_le_integer "$1" $((gd_sector * 512)) 4)
    echo $((gt_sector * 512 + $2 * 4))
}

# Replaces the descriptor file of a flat disk by TEXT.
write_descriptor() {
    printf '%s\n' "$2" >"$1"
}

flat_descriptor() {
    local extents=$1
    cat <<EOF
# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
$extents

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
EOF
}

# Builds the malformed disk of case NAME in DIR and sets DISK (the path given to vmcrypt) and
# NAMES (file names of which the error line must contain at least one).
build_case() {
    local name=$1 dir=$2
    DISK="$dir/disk.vmdk"
    NAMES=(disk.vmdk)
    case $name in
        truncated-header)
            make_sparse "$DISK"
            truncate -s 100 "$DISK"
            ;;
        bad-magic)
            make_sparse "$DISK"
            printf 'XXXX' | dd of="$DISK" conv=notrunc status=none
            ;;
        version-4)
            make_sparse "$DISK"
            write_le_integer "$DISK" $VERSION_OFFSET 4 4
            ;;
        unknown-incompatible-flag)
            make_sparse "$DISK"
            write_le_integer "$DISK" $FLAGS_OFFSET 4 0x40003
            ;;
        grain-size-zero)
            make_sparse "$DISK"
            write_le_integer "$DISK" $GRAIN_SIZE_OFFSET 8 0
            ;;
        gtes-per-gt-511)
            make_sparse "$DISK"
            write_le_integer "$DISK" $NUM_GTES_PER_GT_OFFSET 4 511
            ;;
        gd-offset-past-eof)
            make_sparse "$DISK"
            write_le_integer "$DISK" $GD_OFFSET_OFFSET 8 0x100000
            ;;
        capacity-max)
            make_sparse "$DISK"
            write_le_integer "$DISK" $CAPACITY_OFFSET 8 0xFFFFFFFFFFFFFFFF
            ;;
        gd-entry-past-eof)
            make_sparse "$DISK"
            write_le_integer "$DISK" $(($(read_le_integer "$DISK" $GD_OFFSET_OFFSET 8) * 512)) 4 0x7FFFFFF0
            ;;
        gt-entry-past-eof)
            make_sparse "$DISK"
            write_le_integer "$DISK" "$(first_gt_entry_offset "$DISK" 0)" 4 0x7FFFFFF0
            ;;
        gt-entry-into-metadata)
            # Grain 0 pointing at sector 21, the redundant grain directory: encrypting it would
            # destroy metadata.
            make_sparse "$DISK"
            write_le_integer "$DISK" "$(first_gt_entry_offset "$DISK" 0)" 4 21
            ;;
        two-gt-entries-one-grain)
            # Grains 0 and 1 stored in the same sectors, in the primary and in the redundant grain
            # table alike: encrypting both would encrypt those sectors twice.
            make_sparse "$DISK"
            local grain0_sector table
            grain0_sector=$(read_le_integer "$DISK" "$(first_gt_entry_offset "$DISK" 0)" 4)
            for table in primary redundant; do
                write_le_integer "$DISK" "$(first_gt_entry_offset "$DISK" 1 "$table")" 4 "$grain0_sector"
            done
            ;;
        descriptor-overflows-reserved-sectors)
            # 11000 bytes of valid-looking descriptor text written at sector 1, over the 20 reserved
            # sectors and into the redundant grain directory at sector 21.
            make_sparse "$DISK"
            "$PYTHON" - "$DISK" <<'PY'
import os, sys

lines = ["# Disk DescriptorFile", "version=1", "CID=fffffffe", "parentCID=ffffffff",
         'createType="monolithicSparse"', "", "# Extent description", 'RW 16384 SPARSE "disk.vmdk"', "",
         "# The Disk Data Base", "#DDB", "", 'ddb.virtualHWVersion = "4"', 'ddb.adapterType = "ide"']
number = 0
while sum(len(line) + 1 for line in lines) < 11000:
    lines.append(f'ddb.comment{number} = "padding line {number} of a descriptor too long for its sectors"')
    number += 1
text = ("\n".join(lines) + "\n").encode()
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, text, 512)
os.close(fd)
PY
            ;;
        extent-size-mismatch)
            # The embedded descriptor declares 32768 sectors, the sparse header 16384.
            make_sparse "$DISK"
            "$PYTHON" - "$DISK" <<'PY'
import os, sys

fd = os.open(sys.argv[1], os.O_RDWR)
area = os.pread(fd, 20 * 512, 512)
assert b"RW 16384 SPARSE" in area
os.pwrite(fd, area.replace(b"RW 16384 SPARSE", b"RW 32768 SPARSE"), 512)
os.close(fd)
PY
            ;;
        flat-extent-missing)
            make_flat "$DISK"
            rm "$dir/disk-flat.vmdk"
            NAMES+=(disk-flat.vmdk)
            ;;
        flat-extent-too-short)
            make_flat "$DISK"
            truncate -s 4M "$dir/disk-flat.vmdk"
            NAMES+=(disk-flat.vmdk)
            ;;
        unknown-extent-type)
            make_flat "$DISK"
            write_descriptor "$DISK" "$(flat_descriptor 'RW 16384 FOO "disk-flat.vmdk" 0')"
            ;;
        overlapping-extents)
            # Two extents over the same first 4 MiB of one file.
            make_flat "$DISK"
            write_descriptor "$DISK" "$(flat_descriptor 'RW 8192 FLAT "disk-flat.vmdk" 0
RW 8192 FLAT "disk-flat.vmdk" 0')"
            NAMES+=(disk-flat.vmdk)
            ;;
        no-extents)
            make_flat "$DISK"
            write_descriptor "$DISK" "$(flat_descriptor '')"
            ;;
        descriptor-random-bytes)
            make_flat "$DISK"
            head -c 512 /dev/urandom >"$DISK"
            ;;
        empty-file)
            : >"$DISK"
            ;;
        nonexistent-path)
            DISK="$dir/missing.vmdk"
            NAMES=(missing.vmdk)
            ;;
        stream-optimized)
            qemu-img create -q -f vmdk -o subformat=streamOptimized "$DISK" 8M
            ;;
        *)
            fail "unknown malformed case $name"
            ;;
    esac
}

# Fails unless the stderr of the last command names one of NAMES.
expect_error_names_file() {
    local case_name=$1 name
    for name in "${NAMES[@]}"; do
        if grep -qF -- "$name" "$TEST_TMP/last.stderr"; then
            return 0
        fi
    done
    fail "$case_name: expected the error line to name ${NAMES[*]}, got: $LAST_STDERR"
}

cases=(
    truncated-header bad-magic version-4 unknown-incompatible-flag grain-size-zero gtes-per-gt-511
    gd-offset-past-eof capacity-max gd-entry-past-eof gt-entry-past-eof gt-entry-into-metadata
    two-gt-entries-one-grain descriptor-overflows-reserved-sectors extent-size-mismatch
    flat-extent-missing flat-extent-too-short unknown-extent-type overlapping-extents no-extents
    descriptor-random-bytes empty-file nonexistent-path stream-optimized
)

for case_name in "${cases[@]}"; do
    dir="$TEST_TMP/$case_name"
    mkdir "$dir"
    build_case "$case_name" "$dir"
    hash_disk_files "$dir" >"$TEST_TMP/hashes"

    expect_exit 3 "$VMCRYPT" encrypt "$DISK"
    expect_error_names_file "$case_name"
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of the $case_name disk"

    # inspect writes nothing, so even the folder's modification time stays. streamOptimized is well
    # formed, so inspect may report it. Every malformed disk is rejected.
    save_dir_state "$dir" "$TEST_TMP/dir-state"
    if [[ $case_name == stream-optimized ]]; then
        expect_exit_in "0 3" "$VMCRYPT" inspect "$DISK"
    else
        expect_exit 3 "$VMCRYPT" inspect "$DISK"
        expect_error_names_file "$case_name"
    fi
    expect_exit_in "0 3" "$VMCRYPT" inspect --json "$DISK"
    if [[ $LAST_EXIT == 3 ]]; then
        echo "$LAST_STDOUT" >"$TEST_TMP/error.json"
        schema=$(json_value "$TEST_TMP/error.json" schema)
        [[ $schema == vmcrypt-error/1 ]] ||
            fail "$case_name: expected inspect --json to print an error document of schema vmcrypt-error/1, got: $LAST_STDOUT"
        exit_code=$(json_value "$TEST_TMP/error.json" exitCode)
        [[ $exit_code == 3 ]] ||
            fail "$case_name: expected exitCode 3 in the JSON error document, got: $LAST_STDOUT"
    fi
    expect_dir_unchanged "$dir" "$TEST_TMP/dir-state" "inspect of the $case_name disk"
done
