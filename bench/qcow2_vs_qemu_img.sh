#!/usr/bin/env bash
# Time to encrypt a qcow2 image: `vmcrypt encrypt` in place against
# `qemu-img convert -O qcow2 -o encrypt.format=luks` with its default settings (2 s of PBKDF2 for the
# key slot), measured in one run on the same image on tmpfs. Prints both times and their ratio
# (target: vmcrypt >= 10x faster). Also checks that QEMU reads vmcrypt's result as the original.
#
# Usage: bench/qcow2_vs_qemu_img.sh [VMCRYPT_BINARY] [SIZE_GIB]
# Needs: qemu-utils, bc, about 3 x SIZE_GIB of free tmpfs in /dev/shm.
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
size_gib=${2:-1}
size=$((size_gib << 30))
vmcrypt=$(readlink -f "$vmcrypt")

work=$(mktemp -d /dev/shm/vmcrypt-bench-qcow2.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export VMCRYPT_KEYSTORE=$work/keys
mkdir -m 0700 keys

# One fully allocated image of random data, copied for each tool.
head -c "$size" /dev/urandom > source.raw
qemu-img convert -f raw -O qcow2 source.raw source.qcow2
rm -f source.raw

seconds_of() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

cp source.qcow2 vmcrypt.qcow2
vmcrypt_seconds=$(seconds_of "$vmcrypt" encrypt --quiet vmcrypt.qcow2)

printf '%s' benchmark-passphrase > passphrase
qemu_seconds=$(seconds_of qemu-img convert --object secret,id=sec0,file=passphrase -f qcow2 -O qcow2 \
  -o encrypt.format=luks,encrypt.key-secret=sec0 source.qcow2 qemu.qcow2)

secret=$("$vmcrypt" qemu-secret vmcrypt.qcow2)
qemu-img compare --object "$secret" --image-opts driver=qcow2,file.filename=vmcrypt.qcow2,encrypt.key-secret=sec0 \
  driver=qcow2,file.filename=source.qcow2 >/dev/null || { echo "QEMU does not read vmcrypt's image as the original" >&2; exit 1; }

printf 'data: %d GiB of random bytes in a qcow2 image on tmpfs (%s cores)\n' "$size_gib" "$(nproc)"
printf 'vmcrypt encrypt (in place):                     %8.2f s\n' "$vmcrypt_seconds"
printf 'qemu-img convert -o encrypt.format=luks:        %8.2f s\n' "$qemu_seconds"
printf 'ratio qemu-img / vmcrypt:                       %8.2f  (target >= 10)\n' \
  "$(echo "$qemu_seconds / $vmcrypt_seconds" | bc -l)"
