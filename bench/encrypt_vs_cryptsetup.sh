#!/usr/bin/env bash
# Rewrite throughput of `vmcrypt encrypt` against `cryptsetup reencrypt --encrypt`, measured in one run
# on the same data in the same folder, plus vmcrypt's peak memory. Prints both rates and their ratio for
# each run, then the range over the runs (target: vmcrypt >= 2x).
#
# Usage: bench/encrypt_vs_cryptsetup.sh [VMCRYPT_BINARY] [SIZE_GIB] [DIR] [RUNS]
#   DIR   the folder both tools work in (default /dev/shm, a tmpfs). A disk-backed folder such as
#         /var/tmp shows what users see when they encrypt disks kept on disks.
#   RUNS  A/B pairs (default 3); the order of the two tools alternates between runs.
# Needs: cryptsetup-bin, GNU time, bc, and about 2 x SIZE_GIB free in DIR.
#
# What makes the comparison fair:
# - Both tools rewrite copies of one file of random bytes, so every unit is allocated and non-zero.
# - Each copy is flushed (`sync FILE`) before its tool starts, so neither pays for the other's or the
#   copy's dirty pages, and its pages are dropped from the page cache (`dd iflag=nocache count=0`), so
#   on a disk-backed folder both start cold, as for the disk of a stopped VM. cryptsetup reads with
#   O_DIRECT and would not profit from a warm cache; vmcrypt would. On tmpfs dropping is a no-op.
# - Both end durable and their time includes it: cryptsetup fdatasyncs each 16 MiB hotzone and fsyncs
#   its metadata after each, vmcrypt fdatasyncs each window and its journal, then the descriptor and the
#   folder (checked with strace -e fdatasync,fsync).
# - cryptsetup runs in its default resilience mode for an in-place encrypt with --reduce-device-size
#   (datashift, 16 MiB hotzones). Its key slot gets 1000 PBKDF2 iterations instead of the default
#   Argon2id (about 2 s and 1 GiB of memory here), so only the data rewrite is compared; vmcrypt's
#   default key store needs no KDF. Its rate counts SIZE - 32 MiB, the bytes the file system keeps.
# - vmcrypt runs with its defaults (16 MiB windows, journal on) on a monolithicFlat VMDK whose extent is
#   the same SIZE bytes.
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
size_gib=${2:-4}
folder=${3:-/dev/shm}
runs=${4:-3}
size=$((size_gib << 30))
vmcrypt=$(readlink -f "$vmcrypt")

work=$(mktemp -d "$folder/vmcrypt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export VMCRYPT_KEYSTORE=$work/keys

# One random source file, copied for each tool, so both rewrite the same fully allocated data.
head -c "$size" /dev/urandom > source.raw
printf 'benchmark-passphrase' > passphrase

# prepare_copy FILE: a flushed copy of the source whose pages are not cached.
prepare_copy() {
  cp source.raw "$1"
  sync "$1"
  dd if="$1" iflag=nocache count=0 status=none
}

# measure COMMAND...: sets seconds, cpu_seconds and peak_kib from GNU time.
measure() {
  /usr/bin/time -f "%e %U %S %M" -o time.log "$@" >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
  read -r seconds user_seconds system_seconds peak_kib < time.log
  cpu_seconds=$(echo "$user_seconds + $system_seconds" | bc -l)
}

run_vmcrypt() {
  rm -f disk.vmdk disk-flat.vmdk
  prepare_copy disk-flat.vmdk
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
  measure "$vmcrypt" encrypt --quiet disk.vmdk
  vmcrypt_seconds=$seconds vmcrypt_cpu=$cpu_seconds vmcrypt_peak_kib=$peak_kib
  rm -f disk.vmdk disk-flat.vmdk
}

# In-place LUKS2 encryption of a plain file (userspace, no device mapper), as documented in
# cryptsetup-reencrypt(8): --reduce-device-size makes room for the header; locks need root devices.
run_cryptsetup() {
  rm -f luks.img
  prepare_copy luks.img
  measure cryptsetup reencrypt --encrypt --type luks2 --force-offline-reencrypt --disable-locks \
    --key-file passphrase --pbkdf pbkdf2 --pbkdf-force-iterations 1000 -q --reduce-device-size 32M luks.img
  cryptsetup_seconds=$seconds cryptsetup_cpu=$cpu_seconds
  rm -f luks.img
}

fstype=$(stat -f -c %T .)
printf 'data: %d GiB of random bytes in %s (%s), %s cores, load average %s\n' \
  "$size_gib" "$folder" "$fstype" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-4s %-10s %9s %9s %8s %8s   %10s %9s %8s   %6s\n' run first vmcrypt MB/s 'cpu s' 'RSS MiB' \
  cryptsetup MB/s 'cpu s' ratio
ratios=()
for ((run = 1; run <= runs; ++run)); do
  if ((run % 2)); then
    first=vmcrypt; run_vmcrypt; run_cryptsetup
  else
    first=cryptsetup; run_cryptsetup; run_vmcrypt
  fi
  vmcrypt_rate=$(echo "$size / $vmcrypt_seconds / 1000000" | bc -l)
  cryptsetup_rate=$(echo "($size - 33554432) / $cryptsetup_seconds / 1000000" | bc -l)
  ratio=$(echo "$vmcrypt_rate / $cryptsetup_rate" | bc -l)
  ratios+=("$ratio")
  printf '%-4d %-10s %8.2fs %9.1f %8.2f %8.1f   %9.2fs %9.1f %8.2f   %6.2f\n' "$run" "$first" \
    "$vmcrypt_seconds" "$vmcrypt_rate" "$vmcrypt_cpu" "$(echo "$vmcrypt_peak_kib / 1024" | bc -l)" \
    "$cryptsetup_seconds" "$cryptsetup_rate" "$cryptsetup_cpu" "$ratio"
done
sorted=$(printf '%s\n' "${ratios[@]}" | sort -g)
printf 'ratio vmcrypt / cryptsetup over %d runs: %.2f to %.2f  (target >= 2; load average now %s)\n' "$runs" \
  "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")" "$(cut -d' ' -f1-3 /proc/loadavg)"
