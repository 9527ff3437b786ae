#!/usr/bin/env bash
# Runs the CI command N times back to back (default 3) while two spinning shells keep both cores busy, as a
# loaded two-core machine would; prints one line per run (exit code, seconds, pytest's closing line).
# Run it from a fresh clone to include the install steps: git clone . /tmp/loaded && bash /tmp/loaded/tests/harness/under-load.sh
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
runs=${1:-3}
busy=()
for _ in 1 2; do timeout 21600 sh -c 'while :; do :; done' & busy+=($!); done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
for n in $(seq 1 "$runs"); do
  start=$SECONDS
  log=$(mktemp -t cellar-under-load-XXXX.log)
  CI=true bash .ci/run > "$log" 2>&1
  rc=$?
  echo "run $n of $runs: exit $rc in $((SECONDS - start)) s; $(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1) (log: $log)"
done
