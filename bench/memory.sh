#!/usr/bin/env bash
# Peak memory of `vmcrypt encrypt` on a 1 GiB and a 64 GiB monolithicSparse disk with the same 256 MiB of
# data written: the peak must not grow with capacity (target: under 64 MiB for both).
#
# Usage: bench/memory.sh [VMCRYPT_BINARY]
set -euo pipefail

vmcrypt=$(readlink -f "${1:-build/tools/vmcrypt}")
work=$(mktemp -d /dev/shm/vmcrypt-memory.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export VMCRYPT_KEYSTORE=$work/keys

for capacity in 1G 64G; do
  qemu-img create -q -f vmdk -o subformat=monolithicSparse "disk-$capacity.vmdk" "$capacity"
  qemu-io -f vmdk -c 'write -P 0x5a 0 128M' -c 'write -P 0xa5 512M 128M' "disk-$capacity.vmdk" >/dev/null
  /usr/bin/time -f "%M %e" -o time.log "$vmcrypt" encrypt --quiet "disk-$capacity.vmdk"
  read -r peak_kib seconds < time.log
  printf 'capacity %-4s 256 MiB allocated: peak RSS %6d KiB (%.1f MiB), %.2f s\n' \
    "$capacity" "$peak_kib" "$(echo "$peak_kib / 1024" | bc -l)" "$seconds"
done
