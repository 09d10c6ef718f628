#!/usr/bin/env bash
# Merge speed of `vmcrypt consolidate-snapshots` against `qemu-img commit`, measured in one run on
# copies of the same chain in DIR. One delta contains SIZE_GIB of random data. The cases:
# - monolithicSparse, monolithicFlat: a VMDK base with 64 MiB of data under a hosted sparse delta;
# - qcow2: a qcow2 base with 64 MiB of data under a qcow2 overlay;
# - qcow2-full-base: a qcow2 base with 3 x SIZE_GIB of data, so that streaming would copy more than
#   the overlay holds and vmcrypt commits.
# vmcrypt picks its strategy itself: stream (copy the base data that the delta does not cover into the
# delta, then rename it over the base) for the sparse and qcow2 bases, commit for the flat and full ones.
#
# Both tools make the base durable. vmcrypt syncs each batch of data before the metadata that points
# to it. qemu-img commit fdatasyncs the base's files before it exits (strace shows it for the flat
# extent and for qcow2), and for sparse VMDK after each grain table update. `qemu-img commit -d` keeps the
# delta instead of emptying it, which vmdk cannot do, so its timed command also removes the delta file
# and then syncs the folder, as vmcrypt does. Prints both times and their ratio (target: vmcrypt >= 2x),
# and checks that both bases are identical to the top's data.
#
# Each case runs RUNS A/B pairs on fresh copies, the tool that goes first alternating between runs.
# Before each tool starts, its copy is synced and its pages are dropped from the page cache, so
# neither tool reads what the other's copy step left cached.
#
# Usage: bench/consolidate_vs_qemu_img_commit.sh [VMCRYPT_BINARY] [SIZE_GIB] [DIR] [RUNS]
# SUBFORMATS (environment) limits the cases, for example SUBFORMATS=qcow2.
# DIR defaults to /var/tmp, a disk file system on Debian; give /dev/shm for tmpfs, where syncs cost
# nothing. Needs: qemu-utils, bc, about 12 x SIZE_GIB free in DIR (5 x without qcow2-full-base).
set -euo pipefail

vmcrypt=${1:-build/tools/vmcrypt}
size_gib=${2:-1}
folder=${3:-/var/tmp}
runs=${4:-1}
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

# cold COPY_DIR: make a copy's files durable and drop their cached pages.
cold() {
  local file
  sync "$1"/*
  for file in "$1"/*; do
    dd if="$file" iflag=nocache count=0 status=none
  done
}

# run_vmcrypt / run_qemu: time one tool on its copy, cold.
run_vmcrypt() {
  cold vmcrypt-copy
  vmcrypt_seconds=$(seconds_of "$vmcrypt" consolidate-snapshots --quiet "vmcrypt-copy/$top")
}
run_qemu() {
  cold qemu-copy
  qemu_seconds=$(seconds_of sh -c "qemu-img commit -q -d -f $format qemu-copy/$top && rm qemu-copy/$top &&
    sync qemu-copy")
}

printf 'data: %d GiB of random bytes in one delta, in %s (%s, %s cores)\n' "$size_gib" "$folder" \
  "$(stat -f -c %T "$work")" "$(nproc)"
for subformat in ${SUBFORMATS:-monolithicSparse monolithicFlat qcow2 qcow2-full-base}; do
  rm -rf chain vmcrypt-copy qemu-copy
  mkdir chain
  if [[ $subformat == qcow2* ]]; then
    format=qcow2 base=base.qcow2 top=top.qcow2
  else
    format=vmdk base=base.vmdk top=base-000001.vmdk
  fi
  (
    cd chain
    if [[ $subformat == qcow2-full-base ]]; then
      # The base has more data outside the delta than the delta has, so vmcrypt commits.
      qemu-img create -q -f qcow2 "$base" $((size_gib * 4))G
      qemu-io -f qcow2 -c "write -q -s ../random.raw 0 $size" -c "write -q -s ../random.raw $size $size" \
        -c "write -q -s ../random.raw $((2 * size)) $size" "$base"
    elif [[ $format == qcow2 ]]; then
      qemu-img create -q -f qcow2 "$base" $((size_gib * 2))G
      qemu-io -f "$format" -c "write -P 0x11 0 64M" "$base" >/dev/null
    else
      qemu-img create -q -f vmdk -o "subformat=$subformat" "$base" $((size_gib * 2))G
      qemu-io -f "$format" -c "write -P 0x11 0 64M" "$base" >/dev/null
    fi
    qemu-img create -q -f "$format" -b "$base" -F "$format" "$top"
    qemu-io -f "$format" -c "write -q -s ../random.raw 32M $size" "$top"
  )
  qemu-img convert -f "$format" -O raw "chain/$top" expected.raw
  for ((run = 1; run <= runs; ++run)); do
  rm -rf vmcrypt-copy qemu-copy
  cp -a chain vmcrypt-copy
  cp -a chain qemu-copy
  if ((run % 2)); then
    run_vmcrypt
    run_qemu
  else
    run_qemu
    run_vmcrypt
  fi

  qemu-img compare -q -f "$format" -F raw "vmcrypt-copy/$base" expected.raw ||
    { echo "vmcrypt's merged base differs from the top's data" >&2; exit 1; }
  qemu-img compare -q -f "$format" -F raw "qemu-copy/$base" expected.raw ||
    { echo "qemu-img commit's base differs from the top's data" >&2; exit 1; }

  printf '%-17s run %d  vmcrypt consolidate-snapshots %6.2f s   qemu-img commit + rm %6.2f s   ratio %5.2f  (target >= 2)\n' \
    "$subformat:" "$run" "$vmcrypt_seconds" "$qemu_seconds" "$(echo "$qemu_seconds / $vmcrypt_seconds" | bc -l)"
  done
  rm -f expected.raw
done
printf 'load average now %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
