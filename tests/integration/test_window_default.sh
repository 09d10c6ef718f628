#!/usr/bin/env bash
# The default window size: 4 MiB when every file of the disk is on tmpfs, 16 MiB on other file systems.
# For each, an encrypt and a decrypt of a disk full of random data are killed at named points in the
# window pipeline with the default window. inspect must report the journal's window size and done bytes
# at a window boundary, the re-run must finish, and qemu-img compare then checks the guest data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

head -c 32 /dev/urandom >"$TEST_TMP/k.key"

# Kills OPERATION on DISK at FAULT, checks that the journal's window size is WINDOW, and resumes.
kill_and_resume() {
    local disk=$1 operation=$2 fault=$3 window=$4
    local code=0
    { VMCRYPT_FAULT="$fault:kill" "$VMCRYPT" "$operation" --quiet --key-file "$TEST_TMP/k.key" "$disk" 2>/dev/null; } \
        2>/dev/null || code=$?
    [[ $code == 137 ]] || fail "$operation of $disk with VMCRYPT_FAULT=$fault:kill exited $code, expected 137"

    expect_exit 0 "$VMCRYPT" inspect --json "$disk"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    local size done
    size=$(json_value "$TEST_TMP/inspect.json" windowSize)
    [[ $size == "$window" ]] || fail "expected a window size of $window in the journal of $disk, got $size"
    # The done bytes end where the window before the newest entry's begins.
    done=$(json_value "$TEST_TMP/inspect.json" bytesDone)
    ((done % window == 0)) || fail "expected bytesDone of $disk at a window boundary, got $done"

    expect_exit 0 "$VMCRYPT" "$operation" --quiet --key-file "$TEST_TMP/k.key" "$disk"
}

check_folder() {
    local dir=$1 window=$2
    local disk="$dir/disk.vmdk" raw="$dir/disk.raw"
    make_random_disk monolithicFlat "$disk" 96M 96M "$raw"

    kill_and_resume "$disk" encrypt window-synced:3 "$window"
    kill_and_resume "$disk" decrypt window-journaled:4 "$window"
    expect_same_as_raw "$disk" "$raw" "after an interrupted encrypt and decrypt in $dir"
    rm -f "$dir"/disk*
}

# TEST_TMP is on a file system other than tmpfs unless TMPDIR points at one.
if [[ $(stat -f -c %T "$TEST_TMP") == tmpfs ]]; then
    note "TEST_TMP is on tmpfs, so the 16 MiB case is skipped"
else
    check_folder "$TEST_TMP" 16777216
fi

if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then
    shm_dir=$(mktemp -d /dev/shm/vmcrypt-window.XXXXXX)
    trap 'rm -rf "$shm_dir"; cleanup_test_tmp' EXIT
    check_folder "$shm_dir" 4194304
else
    note "/dev/shm is not a tmpfs here, so the 4 MiB case is skipped"
fi
echo "$TEST_NAME: default window sizes checked"
