#!/usr/bin/env bash
# Encrypts and decrypts a vmfsThin disk (a vmfs disk with createType="vmfsThin" and
# ddb.thinProvisioned = "1") with the default key store, checking the result with qemu-img, e2fsck and
# an independent AES-XTS decryption. qemu-img 7.2 cannot open a vmfsThin descriptor, so it reads the
# disk through a copy of the descriptor rewritten as vmfs (see qemu_view_of in lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_roundtrip vmfsThin
