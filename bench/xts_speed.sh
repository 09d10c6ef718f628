#!/bin/bash
# Compares vmcrypt's AES-256-XTS speed on 512-byte units with OpenSSL's, in the same run, on one thread.
#
# Usage: bench/xts_speed.sh [PATH_TO_vmcrypt_xts_speed]    (default: build/bench/vmcrypt_xts_speed)
#
# OpenSSL's figure comes from `openssl speed -evp aes-256-xts -bytes 512`, which makes one EVP call per
# 512-byte unit on a buffer that stays in the L1 cache and counts bytes per second of user CPU time.
# vmcrypt's figures are per second of the benchmark thread's CPU time too, so that other processes on
# the machine skew both less. vmcrypt runs on a 64 MiB buffer, which streams from memory as a disk
# rewrite does, and on a 1 MiB buffer that stays in the L2 cache. When the benchmark was built with
# OpenSSL, OpenSSL also runs on the 64 MiB buffer with one EVP call per unit, for a like-for-like ratio.
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
# OpenSSL on the same 64 MiB buffer, one EVP call per unit, when the benchmark was built with OpenSSL.
openssl_stream=""
if "$binary" 0.1 1 openssl > /dev/null 2>&1; then
    run_ours openssl_stream 2 64 openssl
fi

# The last line of `openssl speed` is "AES-256-XTS  <rate>k", the rate in units of 1000 bytes per second.
openssl_line=$(openssl speed -evp aes-256-xts -bytes 512 -seconds 3 2>/dev/null | tail -n 1)
echo "openssl speed -evp aes-256-xts -bytes 512 -seconds 3 ($(openssl version)): $openssl_line"
openssl_rate=$(awk '{ sub(/k$/, "", $2); printf "%.0f", $2 / 1000 }' <<< "$openssl_line")
echo

awk -v stream="$ours_stream" -v stream_decrypt="$ours_stream_decrypt" -v cached="$ours_cached" \
    -v openssl="$openssl_rate" -v openssl_stream="$openssl_stream" 'BEGIN {
    printf "openssl speed, 512-byte units, cache-resident:  %6d MB/s\n", openssl
    printf "vmcrypt encrypt, 64 MiB buffer:                 %6d MB/s  ratio to openssl speed %.2f\n", stream, stream / openssl
    printf "vmcrypt decrypt, 64 MiB buffer:                 %6d MB/s  ratio to openssl speed %.2f\n", stream_decrypt, stream_decrypt / openssl
    printf "vmcrypt encrypt, 1 MiB buffer:                  %6d MB/s  ratio to openssl speed %.2f\n", cached, cached / openssl
    if (openssl_stream != "")
        printf "OpenSSL EVP encrypt, 64 MiB buffer:             %6d MB/s  vmcrypt / OpenSSL on this buffer %.2f\n", openssl_stream, stream / openssl_stream
}'
