# bench-lib.sh: set-up shared by the bench scripts; sourced, never run.

# bench_home NAME: a private PYRO_HOME (exported, also in $home) for this
# run's VMs and workspaces, sharing the user's environments (with their
# golden snapshots) and caches. The caller removes $home when it ends.
bench_home() {
  local state=${PYRO_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/pyro}
  home=$(mktemp -d "/tmp/pyro-bench-$1.XXXXXX")
  chmod 700 "$home"
  ln -s "$state/environments" "$home/environments"
  ln -s "$state/cache" "$home/cache"
  export PYRO_HOME=$home
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# since_s START: seconds (to the ms) since START, a now_ms value.
since_s() { awk -v s="$1" -v e="$(now_ms)" 'BEGIN{ printf "%.3f", (e-s)/1000 }'; }
median() { sort -n | awk '{a[NR]=$1} END{ if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0 && a ~ /^[0-9.]+$/) printf "%.2fx", a/b; else print "n/a" }'; }

# make_tree DIR FILES MIB: FILES files of random bytes, MIB MiB in all,
# spread over 20 directories under DIR (the tree the storage rows move).
make_tree() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
root, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = mib * 1024 * 1024 // n
for i in range(n):
    d = os.path.join(root, "d%d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%d.bin" % i), "wb") as f:
        f.write(os.urandom(size))
PY
}
