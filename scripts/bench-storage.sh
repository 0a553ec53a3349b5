#!/usr/bin/env bash
# Storage benchmark for workspaces (issue #15): seeded create, sync push,
# export, diff after one change, snapshot create/reset, checkpoint overhead
# per exec, each beside Docker on the same root filesystem when Docker is
# available (docker run -d + docker cp of the same tree). Prints seconds and
# ratios. Boots guests: run it alone (e.g. under flock /tmp/pyro-e2e.lock).
#
#   scripts/bench-storage.sh [PYRO_BIN]      (env: ENV=debian:12-base FILES=1000 MIB=196;
#                                              CREATES=3 seeded creates, medians;
#                                              CREATE_ONLY=1 stops after them;
#                                              DIFFS=5 diffs after one change, median;
#                                              QUICK=1 stops after the diff: transfers only)
set -eu
PYRO=${1:-$(dirname "$0")/../bin/pyro}
ENV=${ENV:-debian:12-base}
FILES=${FILES:-1000}
MIB=${MIB:-196}
T=$(mktemp -d)
trap 'rm -rf "$T"; [ -n "${ID:-}" ] && "$PYRO" workspace delete "$ID" >/dev/null 2>&1; [ -n "${ID2:-}" ] && "$PYRO" workspace delete "$ID2" >/dev/null 2>&1; [ -n "${ID3:-}" ] && "$PYRO" workspace delete "$ID3" >/dev/null 2>&1; [ -n "${CID:-}" ] && docker rm -f "$CID" >/dev/null 2>&1; true' EXIT

. "$(dirname "$0")/bench-lib.sh"

make_tree "$T/tree" "$FILES" "$MIB"
echo "tree: $FILES files, $MIB MiB; environment $ENV"

DOCKER=""
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  IMG=pyro-bench-$(echo "$ENV" | tr ':' '-')
  if ! docker image inspect "$IMG" >/dev/null 2>&1; then
    ROOTFS=$("$PYRO" env inspect --json "$ENV" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["path"] + "/rootfs.ext4")')
    mkdir "$T/m" && mount -o loop,ro,noload "$ROOTFS" "$T/m" && tar -C "$T/m" -c . | docker import - "$IMG" >/dev/null; umount "$T/m"
  fi
  DOCKER=1
else
  echo "docker: not available (no ratios)"
fi

# 1. seeded create, restored from the workspace configuration's golden
#    snapshot (made here first, so its one-time build is not in the figure)
"$PYRO" prepare --workspace "$ENV" >/dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
#    CREATES rounds (default 3), pyro and Docker alternating, medians; the
#    last workspace and container stay for the rows below.
: >"$T/pc"; : >"$T/dc"
for _ in $(seq "${CREATES:-3}"); do
  if [ -n "${ID:-}" ]; then "$PYRO" workspace delete "$ID" >/dev/null; fi
  if [ -n "${CID:-}" ]; then docker rm -f "$CID" >/dev/null; fi
  sync; s=$(now_ms); ID=$("$PYRO" workspace create --id-only --seed-path "$T/tree" "$ENV"); echo "$(since_s "$s")" >>"$T/pc"
  if [ -n "$DOCKER" ]; then
    sync; s=$(now_ms); CID=$(docker run -d --network none "$IMG" sleep infinity); docker cp "$T/tree/." "$CID:/workspace" ; echo "$(since_s "$s")" >>"$T/dc"
  fi
done
p_create=$(median <"$T/pc")
d_create=""
if [ -n "$DOCKER" ]; then d_create=$(median <"$T/dc"); fi
p_start=$("$PYRO" workspace status --json "$ID" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("start", "?"))')
echo "create seeded:   pyro ${p_create}s  docker ${d_create:-n/a}s  ratio $(ratio "$p_create" "$d_create")  (median of ${CREATES:-3}: pyro $(echo $(cat "$T/pc")), docker $(echo $(cat "$T/dc")); start: $p_start; goal <= 1.5x)"
if [ -n "${CREATE_ONLY:-}" ]; then exit 0; fi

# 2. sync push of the same tree into a subdirectory of the running workspace
#    (the result says which path carried it: host - the guest released
#    /workspace and QEMU switched to a layer written on the host,
#    workspace_hostpush_running.go - or disk, the transfer disk, or guest)
transfer() { python3 -c 'import json,sys; print(json.load(sys.stdin).get("transfer", "guest"))'; }
s=$(now_ms); x=$("$PYRO" workspace sync push --json "$ID" "$T/tree" --dest /workspace/p | transfer); p_push=$(since_s "$s")
d_push=""
if [ -n "$DOCKER" ]; then
  docker exec "$CID" mkdir -p /workspace/p; s=$(now_ms); docker cp "$T/tree/." "$CID:/workspace/p"; d_push=$(since_s "$s")
fi
echo "push running ($x): pyro ${p_push}s  docker ${d_push:-n/a}s  ratio $(ratio "$p_push" "$d_push")  (goal <= 1.5x)"
# ... and into a running workspace that takes checkpoints (the MCP default):
#    the push's checkpoint is the layer it replaces (workspace_hostpush_checkpoint.go)
ID3=$("$PYRO" workspace create --id-only --checkpoints "$ENV")
"$PYRO" workspace exec "$ID3" -- true >/dev/null
#    Logged at debug level: the push's steps (release with the listing, the
#    top frozen, the chain flattened, debugfs, record, switch, remount...)
#    are printed under the row.
sync; s=$(now_ms); x=$(PYRO_LOG=debug "$PYRO" workspace sync push --json "$ID3" "$T/tree" --dest /workspace/p 2>"$T/pushc.log" | transfer); p_pushc=$(since_s "$s")
d_pushc=""
if [ -n "$DOCKER" ]; then
  docker exec "$CID" mkdir -p /workspace/c; sync; s=$(now_ms); docker cp "$T/tree/." "$CID:/workspace/c"; d_pushc=$(since_s "$s")
fi
echo "push running, checkpoints ($x): pyro ${p_pushc}s  docker ${d_pushc:-n/a}s  ratio $(ratio "$p_pushc" "$d_pushc")  (goal <= 1.5x)"
echo "  steps (ms): $(grep -o 'msg="host push into the running workspace" total_ms=[0-9.]* steps="[^"]*"' "$T/pushc.log" | sed -e 's/.*total_ms=/total=/' -e 's/ steps="/ /' -e 's/"$//') $(grep -o 'listing=[a-z]*' "$T/pushc.log" | head -1)"
#    ... and into that workspace once stopped: the push's checkpoint is
#    the stopped top, its listing read from the upper image on the host
#    (workspace_hostpush.go); should the push ask for a start instead (an
#    older pyro), the row times start + push and says so
"$PYRO" workspace stop "$ID3" >/dev/null
sync; s=$(now_ms); how=""
#    (the reply is parsed after the clock stops: python's start-up, ~0.3-1 s
#    on a loaded host, is not the push's; the other rows parse it in the
#    pipeline, beside the push)
if out=$(PYRO_LOG=debug "$PYRO" workspace sync push --json "$ID3" "$T/tree" --dest /workspace/s 2>"$T/pushcs.log"); then
  p_pushcs=$(since_s "$s")
else
  "$PYRO" workspace start "$ID3" >/dev/null
  out=$("$PYRO" workspace sync push --json "$ID3" "$T/tree" --dest /workspace/s); how="start + push, "
  p_pushcs=$(since_s "$s")
fi
x=$(echo "$out" | transfer)
d_pushcs=""
if [ -n "$DOCKER" ]; then
  docker exec "$CID" mkdir -p /workspace/cs; sync; s=$(now_ms); docker cp "$T/tree/." "$CID:/workspace/cs"; d_pushcs=$(since_s "$s")
fi
echo "push stopped, checkpoints: pyro ${p_pushcs}s  docker ${d_pushcs:-n/a}s  ratio $(ratio "$p_pushcs" "$d_pushcs")  (${how}via $x; goal <= 1.5x)"
steps() { grep -o 'msg="host push into the stopped workspace" total_ms=[0-9.]* steps="[^"]*"' "$1" | sed -e 's/.*total_ms=/total=/' -e 's/ steps="/ /' -e 's/"$//'; }
echo "  steps (ms): $(steps "$T/pushcs.log")"
"$PYRO" workspace delete "$ID3" >/dev/null; ID3=""
# ... and into the stopped workspace: written into its upper layer on the
#    host (workspace_hostpush.go), Docker copying into a fresh directory too
"$PYRO" workspace stop "$ID" >/dev/null
sync; s=$(now_ms); x=$(PYRO_LOG=debug "$PYRO" workspace sync push --json "$ID" "$T/tree" --dest /workspace/q 2>"$T/pushs.log" | transfer); p_pushs=$(since_s "$s")
d_pushs=""
if [ -n "$DOCKER" ]; then
  docker exec "$CID" mkdir -p /workspace/q; sync; s=$(now_ms); docker cp "$T/tree/." "$CID:/workspace/q"; d_pushs=$(since_s "$s")
fi
echo "push stopped:    pyro ${p_pushs}s  docker ${d_pushs:-n/a}s  ratio $(ratio "$p_pushs" "$d_pushs")  (via $x; goal <= 1.5x)"
echo "  steps (ms): $(steps "$T/pushs.log")"
"$PYRO" workspace start "$ID" >/dev/null

# 3. export (the result says which path served it: host or guest)
s=$(now_ms); x=$("$PYRO" workspace export --json "$ID" p --output "$T/out-p" | transfer); p_exp=$(since_s "$s")
d_exp=""
if [ -n "$DOCKER" ]; then s=$(now_ms); docker cp "$CID:/workspace/p" "$T/out-d"; d_exp=$(since_s "$s"); fi
echo "export:          pyro ${p_exp}s  docker ${d_exp:-n/a}s  ratio $(ratio "$p_exp" "$d_exp")  (running, via $x)"
if [ -n "$DOCKER" ]; then cmp -s "$T/out-p/d0/f0.bin" "$T/out-d/d0/f0.bin" || echo "export: pyro and docker outputs differ"; fi
# ... and of the stopped workspace (read from its images, not booted)
"$PYRO" workspace stop "$ID" >/dev/null
s=$(now_ms); x=$("$PYRO" workspace export --json "$ID" p --output "$T/out-s" | transfer); p_exps=$(since_s "$s")
echo "export stopped:  pyro ${p_exps}s  docker ${d_exp:-n/a}s  ratio $(ratio "$p_exps" "$d_exp")  (via $x)"
"$PYRO" workspace start "$ID" >/dev/null

# 4. diff after changing one file of the seeded tree (the push is a change too:
#    measured after a reset so only the one file differs)
"$PYRO" workspace reset "$ID" >/dev/null
"$PYRO" workspace exec "$ID" -- sh -c 'echo x >> d0/f0.bin' >/dev/null
#    DIFFS rounds (default 5), median: one sample is at the mercy of the
#    other work on a shared machine
: >"$T/pd"
for _ in $(seq "${DIFFS:-5}"); do s=$(now_ms); "$PYRO" workspace diff --json "$ID" >/dev/null; echo "$(since_s "$s")" >>"$T/pd"; done
p_diff=$(median <"$T/pd")
echo "diff (1 change): pyro ${p_diff}s  (median of ${DIFFS:-5}: $(echo $(cat "$T/pd")); goal <= 0.1 s)"
[ -n "${QUICK:-}" ] && exit 0

# 5. snapshot create / reset, against a cold boot (pyro run true)
"$PYRO" workspace sync push "$ID" "$T/tree" --dest /workspace/p >/dev/null
s=$(now_ms); "$PYRO" workspace snapshot create "$ID" bench >/dev/null; p_snap=$(since_s "$s")
s=$(now_ms); "$PYRO" workspace reset "$ID" --snapshot bench >/dev/null; p_reset=$(since_s "$s")
# The reference is a cold boot (no memory snapshot), after one untimed run
# so that a first run's one-time costs (KVM probe, initramfs) are not in it.
"$PYRO" run "$ENV" -- true >/dev/null 2>&1
s=$(now_ms); PYRO_WARM=0 "$PYRO" run "$ENV" -- true >/dev/null; cold=$(since_s "$s")
echo "snapshot create: pyro ${p_snap}s (upper layer ${MIB} MiB; goal <= 0.2 s)"
echo "reset:           pyro ${p_reset}s  cold boot ${cold}s  ratio $(ratio "$p_reset" "$cold") (goal <= 0.5x)"

# 6. checkpoint overhead per exec (small upper layer; and with the pushed tree in it)
per_exec() { # ID N -> seconds per exec of `true`
  s=$(now_ms); i=0; while [ $i -lt "$2" ]; do "$PYRO" workspace exec "$1" -- true >/dev/null; i=$((i+1)); done
  echo "$(since_s "$s") / $2" | bc -l
}
ID2=$("$PYRO" workspace create --id-only --checkpoints "$ENV")
"$PYRO" workspace exec "$ID" -- true >/dev/null; "$PYRO" workspace exec "$ID2" -- true >/dev/null
off=$(per_exec "$ID" 5); on=$(per_exec "$ID2" 5)
printf 'checkpoint/exec: %.3fs without, %.3fs with: overhead %.0f ms (small upper layer)\n' "$off" "$on" "$(echo "($on - $off) * 1000" | bc -l)"
"$PYRO" workspace sync push "$ID2" "$T/tree" --dest /workspace/p >/dev/null
# The first exec after a push pays once for what the push left: the guest
# lists the pushed upper layer whole (its file tracker starts afresh on the
# remounted disk) and the push's own housekeeping may still hold the
# layers; printed apart from the per-exec figure that follows it.
first=$(per_exec "$ID2" 1)
on2=$(per_exec "$ID2" 5)
printf 'checkpoint/exec: %.3fs with %s MiB in the upper layer: overhead %.0f ms (the first exec after the push: %.3fs)\n' "$on2" "$MIB" "$(echo "($on2 - $off) * 1000" | bc -l)" "$first"
