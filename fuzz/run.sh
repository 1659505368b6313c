#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from the checked-in seeds. New corpus
# entries go to a scratch directory, so the seeds stay as reviewed. A crash fails the run
# and leaves its input under fuzz/artifacts/<target>/: add it as a regression test.
#   fuzz/run.sh 30         # CI: 30 s each
#   fuzz/run.sh 3600       # longer, locally
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
  echo "=== fuzz $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "seeds/$target" -- \
      -max_total_time="$seconds" >"$scratch/$target.log" 2>&1; then
    cat "$scratch/$target.log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "Done [0-9]+ runs" "$scratch/$target.log" || tail -n 2 "$scratch/$target.log"
done
