#!/usr/bin/env bash
# Encrypts and decrypts a monolithicFlat disk (descriptor file and one flat extent)
# with the default key store, checking the result with qemu-img, e2fsck and an independent AES-XTS
# decryption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_roundtrip monolithicFlat
