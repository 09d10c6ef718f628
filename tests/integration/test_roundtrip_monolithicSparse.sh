#!/usr/bin/env bash
# Encrypts and decrypts a monolithicSparse disk (one hosted sparse extent with an embedded descriptor)
# with the default key store, checking the result with qemu-img, e2fsck and an independent AES-XTS
# decryption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_roundtrip monolithicSparse
