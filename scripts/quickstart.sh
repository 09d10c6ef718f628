#!/usr/bin/env bash
# The main job on a sample disk: build vmcrypt, make a VMDK holding an ext4 file system with a few files,
# encrypt it with the default key source (a key store in a temporary folder), inspect it, decrypt it, and
# let qemu-img confirm that the disk is identical to the original.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
BUILD_DIR=build scripts/build.sh >/dev/null
vmcrypt=$PWD/build/tools/vmcrypt

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VMCRYPT_KEYSTORE=$work/keys

mkdir "$work/files"
echo "hello from vmcrypt" > "$work/files/hello.txt"
cp /etc/os-release "$work/files/"
head -c 1M /dev/urandom > "$work/files/random.bin"
truncate -s 64M "$work/sample.raw"
mkfs.ext4 -q -F -d "$work/files" "$work/sample.raw"
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$work/sample.raw" "$work/sample.vmdk"

set -x
"$vmcrypt" encrypt "$work/sample.vmdk"
"$vmcrypt" inspect "$work/sample.vmdk"
"$vmcrypt" decrypt "$work/sample.vmdk"
qemu-img compare -f vmdk -F raw "$work/sample.vmdk" "$work/sample.raw"
