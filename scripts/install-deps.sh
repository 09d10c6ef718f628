#!/usr/bin/env bash
# Installs the Debian 12 packages vmcrypt builds and tests with, skipping those already present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libbotan-2-dev libcli11-dev nlohmann-json3-dev libgtest-dev
  qemu-utils e2fsprogs cryptsetup-bin openssl python3 python3-cryptography
  python3-pykmip libqcow-utils python3-libqcow
  zlib1g-dev libzstd-dev
  clang libclang-rt-14-dev
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
