#!/usr/bin/env bash
# Checkpoint overhead per exec (issue #15, goal <= 10 ms): two workspaces of
# the same environment, one with --checkpoints, run the same commands in
# turn (alternating which goes first); prints the median time of an exec in
# each and the difference, in one run, for: a command that writes nothing
# (`true`), one that appends to a file (small upper layer), and the same
# append after a tree of MIB MiB in FILES files was pushed into both
# workspaces (the upper layer then holds it: before the incremental quiet
# listing, the guest listed it whole after every writing exec).
# Each exec is one `pyro workspace exec` process, timed from start to exit;
# the two workspaces have the same shape (both layered, the same tree
# pushed), so the difference is the checkpoint's cost on the command's
# path. The figure is the median of the N paired differences (each exec
# with checkpoints minus the exec without next to it): a busy machine
# slows both of a pair alike, where the difference of two medians of
# ~60 ms execs swung by +-15 ms between runs (`true` once read 26 ms
# against 5 ms for a write that does more). Printed beside it: the
# spread of the differences (25th-75th percentile), both medians, the
# load at the start and end of the row, and from the execs' debug logs
# where the difference goes: the checkpointed exec's host steps before its
# command (lock, pending report, layer, record) and after it (the record's
# sync, the tidy request), and the agent call that runs the command in
# each workspace (the guest's share: e.g. the first write into a fresh
# overlay allocates its clusters). GAP_MS passes between two execs (an agent thinks between its
# commands): the housekeeping a checkpoint leaves to the workspace's
# supervisor (next overlay, merges, folding the listing) then runs on its
# own, not inside the next timed exec of either workspace; its time is
# printed apart from the row (from the supervisor's debug log), with how
# many runs took longer than the gap (those overlapped the next timed
# exec), as is the load during each row.
# Boots guests: run it alone (e.g. under flock /tmp/pyro-e2e.lock).
#
#   scripts/bench-checkpoint.sh [PYRO_BIN]      (env: ENV=debian:12-base N=21 MIB=196 FILES=1000 GAP_MS=150; FILES=0 skips the last row)
set -eu
PYRO=${1:-$(dirname "$0")/../bin/pyro}
ENV=${ENV:-debian:12-base}
N=${N:-21}
T=$(mktemp -d)
trap 'rm -rf "$T"; for id in ${ON:-} ${OFF:-}; do "$PYRO" workspace delete "$id" >/dev/null 2>&1; done; true' EXIT
. "$(dirname "$0")/bench-lib.sh"
# The supervisors log their housekeeping's times at debug level.
ON=$(PYRO_LOG=debug "$PYRO" workspace create --id-only --checkpoints "$ENV" 2>/dev/null)
OFF=$("$PYRO" workspace create --id-only "$ENV")
GAP_MS=${GAP_MS:-150}
gap() { sleep "$(awk -v m="$GAP_MS" 'BEGIN{ printf "%.3f", m/1000 }')"; }
MIB=${MIB:-196}
FILES=${FILES:-1000}
# Warm both (first exec after create pays one-time costs).
for id in "$ON" "$OFF"; do "$PYRO" workspace exec "$id" -- true >/dev/null; "$PYRO" workspace exec "$id" -- true >/dev/null; done

run() { # LABEL ID CMD... -> appends one duration (ms) to $T/LABEL
  label=$1 id=$2; shift 2
  gap
  # Both with the debug log (the same work in both): the checkpointed
  # exec's log says how long its host steps took.
  s=$(now_ms); PYRO_LOG=debug "$PYRO" workspace exec "$id" -- "$@" >/dev/null 2>>"$T/log-$label"; e=$(now_ms)
  echo $((e - s)) >>"$T/$label"
}
# Each kind in a run of its own: a command's writes are frozen by the next
# command's checkpoint, so the write row carries the cost of its writes.
rows() { # KIND CMD...: N execs in each workspace, alternating
  kind=$1; shift
  housekept=$(housekeeping_count)
  load1 >"$T/load0-$kind"
  i=0
  while [ $i -lt "$N" ]; do
    if [ $((i % 2)) = 0 ]; then run "on-$kind" "$ON" "$@"; run "off-$kind" "$OFF" "$@"
    else run "off-$kind" "$OFF" "$@"; run "on-$kind" "$ON" "$@"; fi
    i=$((i + 1))
  done
  load1 >"$T/load-$kind"
  housekeeping_since "$housekept" >"$T/hk-$kind"
  slog | grep 'msg="checkpoint housekeeping"' | tail -n +"$((housekept + 1))" | sed -n 's/.*total_ms=\([0-9.]*\).*/\1/p' >"$T/hkall-$kind"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
slog() { cat "${PYRO_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/pyro}/workspaces/$ON/supervisor.log" 2>/dev/null; }
housekeeping_count() { slog | grep -c 'msg="checkpoint housekeeping"' || true; }
# housekeeping_since N: the median time (ms) of the supervisor's
# housekeeping runs after the first N ("-" when it logged none).
housekeeping_since() {
  slog | grep 'msg="checkpoint housekeeping"' | tail -n +"$(($1 + 1))" | sed -n 's/.*total_ms=\([0-9.]*\).*/\1/p' | median | sed 's/^nan$/-/'
}
rows true true
rows write sh -c 'echo x >> log.txt'
kinds="true write"
if [ "$FILES" -gt 0 ]; then
  make_tree "$T/tree" "$FILES" "$MIB"
  for id in "$ON" "$OFF"; do "$PYRO" workspace sync push "$id" "$T/tree" --dest /workspace/tree >/dev/null; done
  for id in "$ON" "$OFF"; do "$PYRO" workspace exec "$id" -- true >/dev/null; done
  rows write-$FILES sh -c 'echo x >> log.txt'
  kinds="$kinds write-$FILES"
fi
# pctl P: the P-th percentile (nearest rank) of the numbers on stdin.
pctl() { sort -n | awk -v p="$1" '{a[NR]=$1} END{ if (NR==0) {print "nan"; exit} i=int((NR-1)*p/100+0.5)+1; print a[i] }'; }
# steps SIDE KIND WHICH: the median time (ms) of one part of the execs'
# debug records (SIDE on: "checkpointed exec", off: "exec"): WHICH is
# "before" (the host steps before the command: lock, pending report,
# layer, record), "exec" (the agent call that runs the command) or
# "after" (the steps after it: the record's sync, the tidy request).
steps() {
  msg='msg="checkpointed exec"'; [ "$1" = off ] && msg='msg=exec '
  grep -h "$msg" "$T/log-$1-$2" 2>/dev/null |
    sed -n 's/.*steps="\([^"]*\)".*/\1/p' |
    awk -v which="$3" '{ t=0; part="before"; for (i=1;i<=NF;i++) { split($i,kv,"="); if (kv[1]=="exec") { if (which=="exec") t+=kv[2]; part="after"; continue } if (part==which) t+=kv[2] } print t }' |
    median | sed 's/^nan$/-/'
}
# overran KIND GAP: how many of the row's housekeeping runs took longer
# than the gap between two execs (their end then overlapped the next timed
# exec of one workspace or the other).
overran() { awk -v g="$2" '$1 > g { n++ } END { print n+0 }' "$T/hkall-$1"; }
for kind in $kinds; do
  on=$(median <"$T/on-$kind"); off=$(median <"$T/off-$kind")
  paste "$T/on-$kind" "$T/off-$kind" | awk '{print $1-$2}' >"$T/diff-$kind"
  d=$(median <"$T/diff-$kind"); lo=$(pctl 25 <"$T/diff-$kind"); hi=$(pctl 75 <"$T/diff-$kind")
  label=$kind
  [ "$kind" = "write-$FILES" ] && label="write, $FILES files ($MIB MiB) in the upper layer"
  printf 'exec %-5s: checkpoint overhead %5.1f ms per exec (median of %d paired differences, 25-75%%: %s..%s ms; goal <= 10 ms); medians %.1f ms without, %.1f ms with; host steps before the command %s ms, the exec call %s ms with vs %s ms without, steps after it %s ms; load %s -> %s; supervisor housekeeping after each exec, off its path: %s ms (%s of %d longer than the %s ms gap)\n' \
    "$label" "$d" "$N" "$lo" "$hi" "$off" "$on" "$(steps on "$kind" before)" \
    "$(steps on "$kind" exec)" "$(steps off "$kind" exec)" "$(steps on "$kind" after)" \
    "$(cat "$T/load0-$kind")" "$(cat "$T/load-$kind")" "$(cat "$T/hk-$kind")" \
    "$(overran "$kind" "$GAP_MS")" "$(wc -l <"$T/hkall-$kind")" "$GAP_MS"
done
n=$("$PYRO" workspace checkpoint list --json "$ON" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["checkpoints"]))')
echo "checkpoints kept: $n"
uptime
