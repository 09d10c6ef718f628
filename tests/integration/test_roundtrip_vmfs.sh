#!/usr/bin/env bash
# Encrypts and decrypts a vmfs disk (descriptor file and one VMFS extent, handcrafted from a monolithicFlat disk)
# with the default key store, checking the result with qemu-img, e2fsck and an independent AES-XTS
# decryption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_roundtrip vmfs
