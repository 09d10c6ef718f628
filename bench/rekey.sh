#!/usr/bin/env bash
# Rekey costs, measured in one run on tmpfs:
# 1. shallow rekey (a new KEK, only the descriptor changes) of a 1 GiB and a 64 GiB monolithicSparse disk
#    with the same 64 MiB of data, median of RUNS runs each: the two times should be equal, in milliseconds;
# 2. deep rekey (a new DEK, every unit rewritten) against encrypt of the same monolithicFlat disk full of
#    random data: the rate ratio deep rekey / encrypt (target >= 0.8).
#
# Usage: bench/rekey.sh [VMCRYPT_BINARY] [DEEP_SIZE_GIB] [RUNS]
# Needs: qemu-utils, bc, about 2 x DEEP_SIZE_GIB of free tmpfs in /dev/shm.
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
deep_gib=${2:-4}
runs=${3:-9}
vmcrypt=$(readlink -f "$vmcrypt")

work=$(mktemp -d /dev/shm/vmcrypt-bench-rekey.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export VMCRYPT_KEYSTORE=$work/keys
head -c 32 /dev/urandom > a.key
head -c 32 /dev/urandom > b.key

seconds_of() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

median() {
  sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# Shallow: alternate the KEK between a.key and b.key, so every run is a real rekey.
shallow_ms() {
  local disk=$1 from=a to=b i
  for i in $(seq 1 "$runs"); do
    echo "1000 * $(seconds_of "$vmcrypt" rekey --quiet --key-file $from.key --new-key-file $to.key "$disk")" | bc -l
    local swap=$from
    from=$to
    to=$swap
  done | median
}

for size in 1G 64G; do
  qemu-img create -q -f vmdk "shallow-$size.vmdk" "$size"
  qemu-io -f vmdk -c "write -P 0x5a 0 64M" "shallow-$size.vmdk" >/dev/null
  "$vmcrypt" encrypt --quiet --key-file a.key "shallow-$size.vmdk"
done
shallow_1g=$(shallow_ms shallow-1G.vmdk)
shallow_64g=$(shallow_ms shallow-64G.vmdk)
rm -f shallow-*.vmdk

# Deep against encrypt: the same random flat extent, encrypted, then deep-rekeyed under the same KEK.
size=$((deep_gib << 30))
head -c "$size" /dev/urandom > disk-flat.vmdk
cat > disk.vmdk <<DESCRIPTOR
# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW $((size / 512)) FLAT "disk-flat.vmdk" 0

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
DESCRIPTOR
encrypt_seconds=$(seconds_of "$vmcrypt" encrypt --quiet --key-file a.key disk.vmdk)
deep_seconds=$(seconds_of "$vmcrypt" rekey --deep --quiet --key-file a.key disk.vmdk)

encrypt_rate=$(echo "$size / $encrypt_seconds / 1000000" | bc -l)
deep_rate=$(echo "$size / $deep_seconds / 1000000" | bc -l)
printf 'shallow rekey, 1 GiB sparse disk:  %.1f ms (median of %d)\n' "$shallow_1g" "$runs"
printf 'shallow rekey, 64 GiB sparse disk: %.1f ms (median of %d)\n' "$shallow_64g" "$runs"
printf 'encrypt,    %d GiB flat: %.2f s, %.0f MB/s\n' "$deep_gib" "$encrypt_seconds" "$encrypt_rate"
printf 'deep rekey, %d GiB flat: %.2f s, %.0f MB/s\n' "$deep_gib" "$deep_seconds" "$deep_rate"
printf 'deep rekey / encrypt rate: %.2f (target >= 0.8)\n' "$(echo "$deep_rate / $encrypt_rate" | bc -l)"
