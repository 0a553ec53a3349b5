#!/usr/bin/env bash
# Checkpoint overhead per exec (issue #15, goal <= 10 ms): two workspaces of
# the same environment, one with --checkpoints, run the same commands in
# turn (alternating which goes first); prints the median time of an exec in each and the difference, for
# a command that writes nothing (`true`) and one that appends to a file.
# Boots guests: run it alone (e.g. under flock /tmp/pyro-e2e.lock).
#
# With MIB set (e.g. MIB=196 FILES=1000), both workspaces first get a tree of
# that size pushed into /workspace, so the upper layer holds it.
#
#   scripts/bench-checkpoint.sh [PYRO_BIN]      (env: ENV=debian:12-base N=15 MIB= FILES=1000)
set -eu
PYRO=${1:-$(dirname "$0")/../bin/pyro}
ENV=${ENV:-debian:12-base}
N=${N:-15}
T=$(mktemp -d)
trap 'rm -rf "$T"; for id in ${ON:-} ${OFF:-}; do "$PYRO" workspace delete "$id" >/dev/null 2>&1; done; true' EXIT
. "$(dirname "$0")/bench-lib.sh"
ON=$("$PYRO" workspace create --id-only --checkpoints "$ENV")
OFF=$("$PYRO" workspace create --id-only "$ENV")
if [ -n "${MIB:-}" ]; then
  make_tree "$T/tree" "${FILES:-1000}" "$MIB"
  for id in "$ON" "$OFF"; do "$PYRO" workspace sync push "$id" "$T/tree" --dest /workspace/tree >/dev/null; done
  echo "upper layer: $MIB MiB in ${FILES:-1000} files pushed"
fi
# Warm both (first exec after create pays one-time costs).
for id in "$ON" "$OFF"; do "$PYRO" workspace exec "$id" -- true >/dev/null; "$PYRO" workspace exec "$id" -- true >/dev/null; done

run() { # LABEL ID CMD... -> appends one duration (ms) to $T/LABEL
  label=$1 id=$2; shift 2
  s=$(now_ms); "$PYRO" workspace exec "$id" -- "$@" >/dev/null; e=$(now_ms)
  echo $((e - s)) >>"$T/$label"
}
# Each kind in a run of its own: a command's writes are frozen by the next
# command's checkpoint, so the write row carries the cost of its writes.
i=0
while [ $i -lt "$N" ]; do
  if [ $((i % 2)) = 0 ]; then run on-true "$ON" true; run off-true "$OFF" true
  else run off-true "$OFF" true; run on-true "$ON" true; fi
  i=$((i + 1))
done
i=0
while [ $i -lt "$N" ]; do
  if [ $((i % 2)) = 0 ]; then run on-write "$ON" sh -c "echo $i >> log.txt"; run off-write "$OFF" sh -c "echo $i >> log.txt"
  else run off-write "$OFF" sh -c "echo $i >> log.txt"; run on-write "$ON" sh -c "echo $i >> log.txt"; fi
  i=$((i + 1))
done
fastest() { sort -n "$T/$1" | head -1; }
# The median is the figure; the fastest runs say the same with less of the
# noise of a busy machine.
for kind in true write; do
  on=$(median <"$T/on-$kind"); off=$(median <"$T/off-$kind")
  onf=$(fastest "on-$kind"); offf=$(fastest "off-$kind")
  printf 'exec %-5s: %6.1f ms without checkpoints, %6.1f ms with: checkpoint overhead %5.1f ms per exec (median of %d; goal <= 10 ms); fastest %.1f vs %.1f: %.1f ms\n' \
    "$kind" "$off" "$on" "$(echo "$on - $off" | bc -l)" "$N" \
    "$offf" "$onf" "$((onf - offf))"
done
n=$("$PYRO" workspace checkpoint list --json "$ON" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["checkpoints"]))')
echo "checkpoints kept: $n (after $((2 * N + 2)) execs)"
uptime
