#!/usr/bin/env bash
# Runs every built libFuzzer target for a few seconds on a copy of its seed corpus.
# Usage: tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
build_dir=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
data=$here/../data

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "$build_dir"/tests/fuzz/fuzz_*; do
  [ -x "$target" ] || continue
  name=$(basename "$target")
  corpus=$work/$name
  mkdir -p "$corpus"
  # Seeds live in tests/data/FORMAT/corpus-REST for a target named fuzz_FORMAT_REST.
  rest=${name#fuzz_}
  seeds=$data/${rest%%_*}/corpus-${rest#*_}
  [ -d "$seeds" ] && cp -r "$seeds"/. "$corpus"/
  # The TTLV decoder is small, so it gets at most 10 s to keep the CI run short.
  limit=$seconds
  if [ "$name" = fuzz_kmip_ttlv ] && [ "$limit" -gt 10 ]; then
    limit=10
  fi
  echo "fuzzing $name for ${limit}s" >&2
  "$target" -max_total_time="$limit" -print_final_stats=0 "$corpus" 2>"$work/$name.log" || {
    tail -n 40 "$work/$name.log" >&2
    echo "fuzz target $name failed" >&2
    exit 1
  }
done
