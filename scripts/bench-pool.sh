#!/usr/bin/env bash
# bench-pool.sh: warm pool hand-out (issue #14) against a warm start, both
# measured in this one run.
#
#   scripts/bench-pool.sh [ENVIRONMENT]     (default debian:12; N=5 runs each)
#
# Prints medians (ms) of:
#   hand-out      a run's claim of a pooled guest (boot_ms of start: pool:
#                 connect, resume, identity refresh, answer)
#   pool run      wall time of `pyro run ENV -- true` served by the pool
#   warm run      wall time of `pyro run ENV -- true` restored (no pool)
# The pool keeps one guest and refills between runs, so at most two guests
# exist at once. The pool runs in a private PYRO_HOME (sharing environments,
# snapshots and caches) and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYRO=${PYRO_BIN:-$PWD/bin/pyro}
ENVNAME=${1:-debian:12}
N=${N:-5}

. scripts/bench-lib.sh
bench_home pool
poolpid=""
cleanup() {
  [ -n "$poolpid" ] && { kill -INT "$poolpid" 2>/dev/null || true; wait "$poolpid" 2>/dev/null || true; }
  rm -rf "$home"
}
trap cleanup EXIT

# field NAME: the first numeric JSON field NAME on stdin (no early-closing
# pipes: with pipefail a SIGPIPE'd writer would fail the script).
field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p" | sed -n 1p; }

"$PYRO" env pull "$ENVNAME" >/dev/null
"$PYRO" prepare "$ENVNAME" >/dev/null

echo "==> pyro run $ENVNAME -- true, warm (no pool), $N runs"
warm=()
for _ in $(seq "$N"); do
  t0=$(now_ms); out=$("$PYRO" run --json "$ENVNAME" -- true); t1=$(now_ms)
  grep -q '"start": *"warm"' <<<"$out" || echo "bench-pool: expected a warm start: $out" >&2
  warm+=($((t1 - t0)))
done

echo "==> pyro pool start --size 1 $ENVNAME"
"$PYRO" pool start --size 1 "$ENVNAME" 2>/dev/null &
poolpid=$!
# wait_ready SERVED: until the pool has a ready guest and SERVED hand-outs.
wait_ready() {
  for _ in $(seq 600); do
    st=$("$PYRO" pool status --json)
    if grep -q '"ready": *1' <<<"$st" && grep -q "\"served\": *$1," <<<"$st"; then return 0; fi
    sleep 0.2
  done
  echo "bench-pool: the pool did not get ready: $st" >&2; exit 1
}
echo "==> pyro run $ENVNAME -- true through the pool, $N runs (refilled between runs)"
handout=() pooled=()
for i in $(seq "$N"); do
  wait_ready $((i - 1))
  t0=$(now_ms); out=$("$PYRO" run --json "$ENVNAME" -- true); t1=$(now_ms)
  grep -q '"start": *"pool"' <<<"$out" || { echo "bench-pool: expected start pool: $out" >&2; exit 1; }
  handout+=("$(field boot_ms <<<"$out")")
  pooled+=($((t1 - t0)))
done

handout_ms=$(printf '%s\n' "${handout[@]}" | median)
pool_ms=$(printf '%s\n' "${pooled[@]}" | median)
warm_ms=$(printf '%s\n' "${warm[@]}" | median)
echo
echo "median of $N, $ENVNAME:"
printf '  %-34s %8s ms   (goal <= 50 ms)\n' "pool hand-out (boot_ms)" "$handout_ms"
printf '  %-34s %8s ms\n' "pyro run -- true through the pool" "$pool_ms"
printf '  %-34s %8s ms\n' "pyro run -- true warm (no pool)" "$warm_ms"
echo "  pool run / warm run: $(ratio "$pool_ms" "$warm_ms")"
echo "  hand-outs: ${handout[*]} ms"
