#!/usr/bin/env bash
# Encrypts and decrypts a twoGbMaxExtentSparse disk of 2100 MiB (two hosted sparse extents split at 2 GiB)
# with the default key store, checking the result with qemu-img, e2fsck and an independent AES-XTS
# decryption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_roundtrip twoGbMaxExtentSparse
