#!/usr/bin/env bash
# Rewrite rate of `vmcrypt encrypt` for several window sizes, on tmpfs and on the folder given (a real
# disk, where every window costs two fdatasync calls). Used to choose the default --window-size.
#
# Usage: bench/window_size.sh [VMCRYPT_BINARY] [DISK_FOLDER] [SIZE_MIB]
set -euo pipefail

vmcrypt=$(readlink -f "${1:-build/tools/vmcrypt}")
disk_folder=${2:-$PWD}
size_mib=${3:-1024}

run_in() {
  local folder=$1 label=$2
  local work
  work=$(mktemp -d "$folder/vmcrypt-window.XXXXXX")
  export VMCRYPT_KEYSTORE=$work/keys
  head -c "${size_mib}M" /dev/urandom > "$work/d-flat.vmdk"
  printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW %d FLAT "d-flat.vmdk" 0\n' \
    $((size_mib * 2048)) > "$work/d.vmdk"
  for window in 1 4 16 64; do
    local start end
    start=$(date +%s.%N)
    "$vmcrypt" encrypt --quiet --window-size "$window" "$work/d.vmdk"
    end=$(date +%s.%N)
    "$vmcrypt" decrypt --quiet --window-size "$window" "$work/d.vmdk"
    printf '%-6s window %3d MiB: %7.1f MB/s\n' "$label" "$window" \
      "$(echo "$size_mib * 1048576 / ($end - $start) / 1000000" | bc -l)"
  done
  rm -rf "$work"
}

run_in /dev/shm tmpfs
run_in "$disk_folder" disk
