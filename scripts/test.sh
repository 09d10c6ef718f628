#!/usr/bin/env bash
# The whole test suite from scratch: install packages, build, run the unit and integration tests
# (CTest), then build the libFuzzer targets with clang and run each for FUZZ_SECONDS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

rm -rf build-test
BUILD_DIR=build-test scripts/build.sh
ctest --test-dir build-test --output-on-failure --timeout 900

rm -rf build-fuzz
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMCRYPT_FUZZ=ON -DVMCRYPT_TESTS=OFF \
  -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
tests/fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-30}"
