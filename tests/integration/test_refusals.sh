#!/usr/bin/env bash
# Disks that encrypt and decrypt must reject without writing: wrong state, snapshots, disks in use by
# QEMU or VMware, VMware-encrypted and streamOptimized disks. Also checks that inspect writes nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Already encrypted, and plaintext on decrypt: exit 3, nothing written.
dir="$TEST_TMP/state"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_small_disk "$disk" "$TEST_TMP/state.raw"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" decrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt of a plaintext disk"
expect_exit 0 "$VMCRYPT" encrypt "$disk"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of an encrypted disk"

# inspect of an encrypted disk writes nothing, not even a lock file or a changed folder time.
save_dir_state "$dir" "$TEST_TMP/dir-state"
expect_exit 0 "$VMCRYPT" inspect "$disk"
expect_exit 0 "$VMCRYPT" inspect --json "$disk"
expect_dir_unchanged "$dir" "$TEST_TMP/dir-state" "inspect of an encrypted disk"
expect_exit 0 "$VMCRYPT" decrypt "$disk"
expect_same_as_raw "$disk" "$TEST_TMP/state.raw" "after decrypt"

# A base disk with a snapshot child: encrypting either one is rejected, and the message of the base
# names the command that merges the snapshots.
dir="$TEST_TMP/snapshot"
mkdir "$dir"
make_ext4_disk monolithicSparse "$dir/base.vmdk" 64M
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk)
qemu-io -f vmdk -c 'write -P 0x77 1M 64k' "$dir/child.vmdk" >/dev/null
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$dir/base.vmdk"
expect_stderr_contains "vmcrypt consolidate-snapshots"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a disk with a snapshot child"
expect_exit 3 "$VMCRYPT" encrypt "$dir/child.vmdk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a snapshot child"

# A snapshot made after the base was encrypted holds writes over ciphertext. decrypt of the base,
# decrypt of the snapshot and consolidate-snapshots all lead to removing the snapshot and decrypting
# the base, never back to each other, and that path works.
dir="$TEST_TMP/encrypted-snapshot"
mkdir "$dir"
make_small_disk "$dir/base.vmdk" "$TEST_TMP/encrypted-snapshot.raw"
expect_exit 0 "$VMCRYPT" encrypt "$dir/base.vmdk"
(cd "$dir" && qemu-img create -q -f vmdk -b base.vmdk -F vmdk base-000001.vmdk)
qemu-io -f vmdk -c 'write -P 0x66 2M 4k' "$dir/base-000001.vmdk" >/dev/null
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" consolidate-snapshots "$dir/base-000001.vmdk"
expect_stderr_contains "were made over ciphertext and cannot be merged"
expect_stderr_contains "remove the snapshot files"
expect_stderr_contains "vmcrypt decrypt"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "consolidate-snapshots over an encrypted base"
expect_exit 3 "$VMCRYPT" decrypt "$dir/base.vmdk"
expect_stderr_contains "snapshots made after it was encrypted ($dir/base-000001.vmdk names it as parent)"
expect_stderr_contains "remove them or move them out of the folder"
if grep -qF "vmcrypt consolidate-snapshots" "$TEST_TMP/last.stderr"; then
    fail "decrypt of an encrypted base with a snapshot sends the user to consolidate-snapshots: $LAST_STDERR"
fi
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt of an encrypted base with a snapshot"
expect_exit 3 "$VMCRYPT" decrypt "$dir/base-000001.vmdk"
expect_stderr_contains "vmcrypt consolidate-snapshots"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt of a snapshot of an encrypted base"
# The advice, followed: remove the snapshot, then decrypt the base.
rm "$dir/base-000001.vmdk"
expect_exit 0 "$VMCRYPT" decrypt "$dir/base.vmdk"
expect_same_as_raw "$dir/base.vmdk" "$TEST_TMP/encrypted-snapshot.raw" "after removing the snapshot and decrypting"

# A disk open in QEMU: rejected with exit 5 and nothing written. Encrypt works once QEMU is gone.
dir="$TEST_TMP/qemu-lock"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_small_disk "$disk" "$TEST_TMP/qemu-lock.raw"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
hold_image_open "$disk"
expect_exit 5 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a disk that qemu-io holds open"
# inspect takes no lock, so it works while QEMU holds the disk.
expect_exit 0 "$VMCRYPT" inspect "$disk"
release_image
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "qemu-io without writes"
expect_exit 0 "$VMCRYPT" encrypt "$disk"

# The same for the flat extent of a monolithicFlat disk: QEMU locks every file of the disk.
dir="$TEST_TMP/qemu-lock-flat"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_ext4_disk monolithicFlat "$disk" 64M
hash_disk_files "$dir" >"$TEST_TMP/hashes"
hold_image_open "$disk"
expect_exit 5 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a monolithicFlat disk that qemu-io holds open"
release_image

# A whole-file flock(2) lock, as flock(1) wrappers and backup scripts take it, on the descriptor or on
# the flat extent: rejected with exit 5, and inspect names it.
for locked in disk.vmdk disk-flat.vmdk; do
    exec {flock_fd}<"$dir/$locked"
    flock --exclusive "$flock_fd"
    expect_exit 5 "$VMCRYPT" encrypt "$disk"
    expect_stderr_contains "flock"
    expect_exit 0 "$VMCRYPT" inspect "$disk"
    grep -q "flock" <<<"$LAST_STDOUT" || fail "inspect does not report the flock(2) lock on $locked: $LAST_STDOUT"
    exec {flock_fd}<&-
    expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a disk whose $locked another process flocks"
done
expect_exit 0 "$VMCRYPT" encrypt "$disk"

# A VMware lock folder next to the disk: rejected with exit 5.
dir="$TEST_TMP/vmware-lock"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_small_disk "$disk" "$TEST_TMP/vmware-lock.raw"
mkdir "$disk.lck"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 5 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a disk with a VMware .lck folder"
rmdir "$disk.lck"
expect_exit 0 "$VMCRYPT" encrypt "$disk"

# A disk encrypted by VMware (encryptionKeys in the descriptor, the I/O filter in the DDB): inspect
# reports it, encrypt and decrypt reject it.
dir="$TEST_TMP/vmware-encrypted"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_ext4_disk monolithicFlat "$disk" 64M
key_locator='vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/a4e7494f-da55-4917-9d90-560c5078866b,HMAC%2dSHA%2d256,kIc7z%2fJowP1s8tbHkO0yYg%3d%3d))'
"$PYTHON" - "$disk" "$key_locator" <<'PY'
import sys

path, locator = sys.argv[1], sys.argv[2]
text = open(path, "rb").read().split(b"\0", 1)[0].decode()
lines = text.split("\n")
index = next(i for i, line in enumerate(lines) if line.startswith("createType="))
lines.insert(index + 1, f'encryptionKeys="{locator}"')
index = next(i for i, line in enumerate(lines) if line.startswith("ddb.adapterType"))
lines.insert(index + 1, 'ddb.iofilters = "vmwarevmcrypt"')
open(path, "w").write("\n".join(lines))
PY
save_dir_state "$dir" "$TEST_TMP/dir-state"
expect_exit 0 "$VMCRYPT" inspect --json "$disk"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
"$PYTHON" - "$TEST_TMP/inspect.json" <<'PY' || fail "expected inspect --json to report the disk as encrypted by VMware, got: $LAST_STDOUT"
import json, sys

# Any key or string value other than the copied key locator must name VMware.
document = json.load(open(sys.argv[1]))
queue = [document]
while queue:
    item = queue.pop(0)
    if isinstance(item, dict):
        if any("vmware" in key.lower() for key in item):
            sys.exit(0)
        queue.extend(item.values())
    elif isinstance(item, list):
        queue.extend(item)
    elif isinstance(item, str) and "vmware" in item.lower() and not item.startswith("vmware:key/"):
        sys.exit(0)
sys.exit("no key or value names VMware")
PY
state=$(json_value "$TEST_TMP/inspect.json" state)
[[ $state != plaintext ]] || fail "expected inspect --json of a VMware-encrypted disk not to report plaintext"
expect_dir_unchanged "$dir" "$TEST_TMP/dir-state" "inspect of a VMware-encrypted disk"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a VMware-encrypted disk"
expect_exit 3 "$VMCRYPT" decrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt of a VMware-encrypted disk"

# An embedded descriptor with less free space than the vmcrypt record needs: encrypt must not let it
# outgrow its 20 reserved sectors into the grain directory.
dir="$TEST_TMP/full-descriptor"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_small_disk "$disk" "$TEST_TMP/full-descriptor.raw"
"$PYTHON" - "$disk" <<'PY'
import os, struct, sys

fd = os.open(sys.argv[1], os.O_RDWR)
descriptor_sector, descriptor_sectors = struct.unpack_from("<QQ", os.pread(fd, 512, 0), 28)
area_size = descriptor_sectors * 512
text = os.pread(fd, area_size, descriptor_sector * 512).split(b"\0", 1)[0]
number = 0
while len(text) < area_size - 300:
    text += b'ddb.comment%d = "filler"\n' % number
    number += 1
os.pwrite(fd, text, descriptor_sector * 512)
os.close(fd)
PY
expect_qemu_check_clean "$disk" "after filling the embedded descriptor (test setup)"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a disk whose embedded descriptor has no room for the record"

# A changed field of the encryption record fails its MAC before any data is touched. The exit code
# is 3 (record invalid) or 4 (wrong key), because both describe a record that the key does not seal.
dir="$TEST_TMP/tampered"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_ext4_disk monolithicFlat "$disk" 64M
expect_exit 0 "$VMCRYPT" encrypt "$disk"
sed -i 's/^ddb\.vmcrypt\.tweak = "guest-sector"/ddb.vmcrypt.tweak = "host-sector"/' "$disk"
grep -q '^ddb.vmcrypt.tweak = "host-sector"' "$disk" || fail "test setup: could not change ddb.vmcrypt.tweak in $disk"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit_in "3 4" "$VMCRYPT" decrypt "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "decrypt of a disk with a changed ddb.vmcrypt.tweak"

# streamOptimized: a supported VMDK type that vmcrypt cannot rewrite in place.
dir="$TEST_TMP/stream"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_random_disk streamOptimized "$disk" 8M 2M "$TEST_TMP/stream.raw"
hash_disk_files "$dir" >"$TEST_TMP/hashes"
expect_exit 3 "$VMCRYPT" encrypt "$disk"
expect_stderr_contains "not supported"
expect_stderr_contains "streamOptimized"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes" "encrypt of a streamOptimized disk"

# inspect of a plaintext disk and of a disk with an unfinished encrypt writes nothing. The journal
# comes from a real run killed while it rewrites a 64 MiB disk of random data in 1 MiB windows.
dir="$TEST_TMP/journal"
disk="$dir/disk.vmdk"
mkdir "$dir"
make_random_disk monolithicSparse "$disk" 64M 60M "$TEST_TMP/journal.raw"
save_dir_state "$dir" "$TEST_TMP/dir-state"
expect_exit 0 "$VMCRYPT" inspect "$disk"
expect_exit 0 "$VMCRYPT" inspect --json "$disk"
expect_dir_unchanged "$dir" "$TEST_TMP/dir-state" "inspect of a plaintext disk"

journal_left=false
for _ in 1 2 3 4 5; do
    if kill_when_journal_appears "$disk.vmcrypt-journal" encrypt --window-size 1 "$disk"; then
        journal_left=true
        break
    fi
    expect_exit 0 "$VMCRYPT" decrypt "$disk"
done
$journal_left || fail "could not stop encrypt while its journal $disk.vmcrypt-journal existed in 5 attempts"

save_dir_state "$dir" "$TEST_TMP/dir-state"
expect_exit 0 "$VMCRYPT" inspect "$disk"
expect_exit 0 "$VMCRYPT" inspect --json "$disk"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
expect_inspect_unfinished "$TEST_TMP/inspect.json" encrypt "encrypting plaintext encrypted"
expect_dir_unchanged "$dir" "$TEST_TMP/dir-state" "inspect of a disk with an unfinished encrypt and its journal"

expect_exit 0 "$VMCRYPT" encrypt --window-size 1 "$disk"
[[ ! -e $disk.vmcrypt-journal ]] || fail "expected the resumed encrypt to remove $disk.vmcrypt-journal"
expect_exit 0 "$VMCRYPT" decrypt "$disk"
expect_same_as_raw "$disk" "$TEST_TMP/journal.raw" "after an interrupted encrypt, its resume and decrypt"
