#!/bin/bash
# Compares vmcrypt's AES-256-XTS speed on 512-byte units with OpenSSL's, in the same run, on one thread.
#
# Usage: bench/xts_speed.sh [PATH_TO_vmcrypt_xts_speed]    (default: build/bench/vmcrypt_xts_speed)
#
# OpenSSL's figure is `openssl speed -evp aes-256-xts -bytes 512`: one EVP call per 512-byte unit on a
# buffer that stays in the L1 cache, in bytes per second of user CPU time (openssl speed's default).
# vmcrypt's figures are per second of the benchmark thread's CPU time too, so that other processes on
# the machine skew both less; vmcrypt is measured on a 64 MiB buffer, which streams from memory as a
# disk rewrite does, and on a 1 MiB buffer that stays in the L2 cache.
set -euo pipefail

binary=${1:-build/bench/vmcrypt_xts_speed}
if [[ ! -x $binary ]]; then
    echo "xts_speed.sh: $binary not found; build it with: cmake --build BUILD_DIR --target vmcrypt_xts_speed" >&2
    exit 2
fi

# Runs the benchmark with the given arguments, prints its output line, and stores its CPU-time rate
# (the number before the final "MB/s CPU") in the variable named by the first argument.
run_ours() {
    local -n rate=$1
    shift
    local line
    line=$("$binary" "$@")
    echo "$line"
    rate=$(awk '{ print $(NF - 2) }' <<< "$line")
}

run_ours ours_stream 2 64 encrypt
run_ours ours_stream_decrypt 2 64 decrypt
run_ours ours_cached 2 1 encrypt

# The last line of `openssl speed` is "AES-256-XTS  <rate>k", the rate in units of 1000 bytes per second.
openssl_line=$(openssl speed -evp aes-256-xts -bytes 512 -seconds 3 2>/dev/null | tail -n 1)
echo "openssl speed -evp aes-256-xts -bytes 512 -seconds 3 ($(openssl version)): $openssl_line"
openssl_rate=$(awk '{ sub(/k$/, "", $2); printf "%.0f", $2 / 1000 }' <<< "$openssl_line")
echo

awk -v stream="$ours_stream" -v stream_decrypt="$ours_stream_decrypt" -v cached="$ours_cached" \
    -v openssl="$openssl_rate" 'BEGIN {
    printf "OpenSSL EVP, 512-byte units, cache-resident:      %6d MB/s\n", openssl
    printf "vmcrypt encrypt, 64 MiB buffer:                   %6d MB/s  ratio %.2f\n", stream, stream / openssl
    printf "vmcrypt decrypt, 64 MiB buffer:                   %6d MB/s  ratio %.2f\n", stream_decrypt, stream_decrypt / openssl
    printf "vmcrypt encrypt, 1 MiB buffer (cache-resident):   %6d MB/s  ratio %.2f\n", cached, cached / openssl
}'
