#!/usr/bin/env bash
# Merge speed of `vmcrypt consolidate-snapshots` against `qemu-img commit`, measured in one run on
# copies of the same chain in DIR: a base disk with 64 MiB of data and one hosted sparse delta holding
# SIZE_GIB of random data, once over a monolithicSparse base and once over a monolithicFlat base.
# Both tools make the base durable: vmcrypt syncs each batch of data before the grain tables that
# point to it, and qemu-img commit syncs each grain table update and flushes at the end.
# `qemu-img commit -d` keeps the delta instead of emptying it, which vmdk cannot do, so its timed
# command also removes the delta file, as vmcrypt does. vmcrypt picks its strategy itself: stream
# (copy the 32 MiB of base data the delta does not cover into the delta, then rename it over the base)
# for the sparse base, commit for the flat one. Prints both times and their ratio (target: vmcrypt
# >= 2x), and checks that both bases are identical to the top's data.
#
# Usage: bench/consolidate_vs_qemu_img_commit.sh [VMCRYPT_BINARY] [SIZE_GIB] [DIR]
# DIR defaults to /var/tmp, a disk file system on Debian; give /dev/shm for tmpfs, where syncs cost
# nothing. Needs: qemu-utils, bc, about 5 x SIZE_GIB free in DIR.
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
size_gib=${2:-1}
folder=${3:-/var/tmp}
size=$((size_gib << 30))
vmcrypt=$(readlink -f "$vmcrypt")

work=$(mktemp -d "$folder/vmcrypt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

head -c "$size" /dev/urandom > random.raw

# seconds_of COMMAND...: wall-clock seconds of a command.
seconds_of() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

printf 'data: %d GiB of random bytes in one delta, in %s (%s, %s cores)\n' "$size_gib" "$folder" \
  "$(stat -f -c %T "$work")" "$(nproc)"
for subformat in monolithicSparse monolithicFlat; do
  rm -rf chain vmcrypt-copy qemu-copy
  mkdir chain
  (
    cd chain
    qemu-img create -q -f vmdk -o "subformat=$subformat" base.vmdk $((size_gib * 2))G
    qemu-io -f vmdk -c "write -P 0x11 0 64M" base.vmdk >/dev/null
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk base-000001.vmdk
    qemu-io -f vmdk -c "write -q -s ../random.raw 32M $size" base-000001.vmdk
  )
  qemu-img convert -f vmdk -O raw chain/base-000001.vmdk expected.raw
  cp -a chain vmcrypt-copy
  cp -a chain qemu-copy
  sync

  vmcrypt_seconds=$(seconds_of "$vmcrypt" consolidate-snapshots --quiet vmcrypt-copy/base-000001.vmdk)
  qemu_seconds=$(seconds_of sh -c 'qemu-img commit -q -d -f vmdk qemu-copy/base-000001.vmdk &&
    rm qemu-copy/base-000001.vmdk')

  qemu-img compare -q -f vmdk -F raw vmcrypt-copy/base.vmdk expected.raw ||
    { echo "vmcrypt's merged base differs from the top's data" >&2; exit 1; }
  qemu-img compare -q -f vmdk -F raw qemu-copy/base.vmdk expected.raw ||
    { echo "qemu-img commit's base differs from the top's data" >&2; exit 1; }
  rm -f expected.raw

  printf '%-17s vmcrypt consolidate-snapshots %6.2f s   qemu-img commit + rm %6.2f s   ratio %5.2f  (target >= 2)\n' \
    "$subformat:" "$vmcrypt_seconds" "$qemu_seconds" "$(echo "$qemu_seconds / $vmcrypt_seconds" | bc -l)"
done
