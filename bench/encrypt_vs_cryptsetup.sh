#!/usr/bin/env bash
# Rewrite throughput of `vmcrypt encrypt` against `cryptsetup reencrypt --encrypt`, measured in one run
# on tmpfs, plus vmcrypt's peak memory. Prints both rates and their ratio (target: vmcrypt >= 2x).
#
# Usage: bench/encrypt_vs_cryptsetup.sh [VMCRYPT_BINARY] [SIZE_GIB]
# Needs: cryptsetup-bin, qemu-utils, GNU time, about 2 x SIZE_GIB of free tmpfs in /dev/shm.
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
size_gib=${2:-4}
size=$((size_gib << 30))
vmcrypt=$(readlink -f "$vmcrypt")

work=$(mktemp -d /dev/shm/vmcrypt-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export VMCRYPT_KEYSTORE=$work/keys

# One random source file, copied for each tool, so both rewrite the same fully allocated data.
head -c "$size" /dev/urandom > source.raw

# seconds_of COMMAND...: wall-clock seconds of a command, with GNU time's peak RSS left in time.log.
seconds_of() {
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o time.log "$@" >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

# vmcrypt: a monolithicFlat disk whose flat extent is the random data, encrypted with crash safety on.
cp source.raw disk-flat.vmdk
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
vmcrypt_seconds=$(seconds_of "$vmcrypt" encrypt --quiet disk.vmdk)
vmcrypt_peak_kib=$(cat time.log)
rm -f disk-flat.vmdk

# cryptsetup: in-place LUKS2 encryption of a plain file (userspace, no device mapper), as documented in
# cryptsetup-reencrypt(8): --reduce-device-size makes room for the header; locks need root devices.
cp source.raw luks.img
printf 'benchmark-passphrase' > passphrase
cryptsetup_seconds=$(seconds_of cryptsetup reencrypt --encrypt --type luks2 --force-offline-reencrypt \
  --disable-locks --key-file passphrase --pbkdf pbkdf2 --pbkdf-force-iterations 1000 -q \
  --reduce-device-size 32M luks.img)
rm -f luks.img

vmcrypt_rate=$(echo "$size / $vmcrypt_seconds / 1000000" | bc -l)
cryptsetup_rate=$(echo "($size - 33554432) / $cryptsetup_seconds / 1000000" | bc -l)
printf 'data: %d GiB of random bytes on tmpfs (%s)\n' "$size_gib" "$(nproc) cores"
printf 'vmcrypt encrypt (monolithicFlat):          %8.1f MB/s  (%.2f s, peak RSS %d KiB)\n' \
  "$vmcrypt_rate" "$vmcrypt_seconds" "$vmcrypt_peak_kib"
printf 'cryptsetup reencrypt --encrypt (luks2):    %8.1f MB/s  (%.2f s)\n' "$cryptsetup_rate" "$cryptsetup_seconds"
printf 'ratio vmcrypt / cryptsetup:                %8.2f  (target >= 2)\n' \
  "$(echo "$vmcrypt_rate / $cryptsetup_rate" | bc -l)"
