package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// privateBaseHome is baseOnlyHome with a copy of debian:12-base's files
// instead of a link to the shared store: a test that makes its memory
// snapshots go (and marks their builds failed) does so in its own store.
func privateBaseHome(t *testing.T) (home, envDir string, env []string) {
	t.Helper()
	home = t.TempDir()
	shared := stateDir()
	if err := os.Symlink(filepath.Join(shared, "cache"), filepath.Join(home, "cache")); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(shared, "environments", "debian_12-base")
	dst := filepath.Join(home, "environments", "debian_12-base")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	// Everything but the shared store's snapshots and verification stamp.
	if out, err := exec.Command("sh", "-c", `set -e; mkdir -p "$2"; cd "$1"; for v in *; do
		mkdir -p "$2/$v"; for f in "$v"/*; do
			case "${f#*/}" in golden) ;; *) cp -a --sparse=always "$f" "$2/$v/" ;; esac
		done; done`, "sh", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy the environment: %v %s", err, out)
	}
	vers, _ := filepath.Glob(filepath.Join(dst, "*"))
	if len(vers) != 1 {
		t.Fatalf("environment versions %q", vers)
	}
	return home, vers[0], []string{"PYRO_HOME=" + home}
}

// mountedSnapshots lists the snapshot directories of envDir whose guest
// had /workspace mounted (the workspace pool's).
func mountedSnapshots(envDir string) []string {
	ms, _ := filepath.Glob(filepath.Join(envDir, "golden", "*", "manifest.json"))
	var out []string
	for _, m := range ms {
		var man struct {
			Key struct {
				Mounted bool `json:"mounted_workspace"`
			} `json:"key"`
		}
		if b, err := os.ReadFile(m); err == nil && json.Unmarshal(b, &man) == nil && man.Key.Mounted {
			out = append(out, filepath.Dir(m))
		}
	}
	return out
}

// A pool whose restored guests keep dying before a claim stops restoring
// their snapshot: after three such deaths the snapshot is discarded with
// its reason (a failed-build mark that quotes the guest's console), and
// the pool goes on without it. Before, the pool restored
// the same snapshot forever (the lead's bench-warm.sh: 9 fills, every one
// "the pooled guest is broken"). The deaths here are QEMUs killed from
// outside, the one death a test can cause at will.
func TestPoolDiscardsSnapshotOfDyingGuests(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, envDir, env := privateBaseHome(t)
	killHomeOnCleanup(t, home)
	if r := pyro(t, env, "prepare", "--workspace", baseEnv); r.code != 0 {
		t.Fatalf("prepare: %s %s", r.stdout, r.stderr)
	}
	snaps := mountedSnapshots(envDir)
	if len(snaps) != 1 {
		t.Fatalf("mounted-workspace snapshots after prepare: %q", snaps)
	}
	startPool(t, env, "--workspace")
	for i := 1; i <= 3; i++ {
		waitPool(t, env, 0, 120*time.Second)
		// The ready guest's, the one QEMU of this home while the pool
		// is full.
		if pids := qemuProcessesFor(home); len(pids) == 1 {
			pid, _ := strconv.Atoi(pids[0])
			_ = syscall.Kill(pid, syscall.SIGKILL)
		} else {
			t.Fatalf("QEMU processes of the pool: %v", pids)
		}
		deadline := time.Now().Add(30 * time.Second)
		for poolState(t, env).Pools[0].Failures < i {
			if time.Now().After(deadline) {
				t.Fatalf("death %d not noticed: %+v", i, poolState(t, env))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if left := mountedSnapshots(envDir); (i < 3) != (len(left) == 1) {
			t.Fatalf("after %d deaths the snapshots are %q", i, left)
		}
	}
	failed := filepath.Join(envDir, "golden", ".failed-"+filepath.Base(snaps[0]))
	if b, err := os.ReadFile(failed); err != nil || !strings.Contains(string(b), "died unused") {
		t.Fatalf("failed-build mark: %q %v", b, err)
	}
	// The pool goes on (the next snapshot that fits, else cold boots),
	// and its guest serves a create.
	waitPool(t, env, 0, 120*time.Second)
	r := pyro(t, env, "workspace", "create", "--json", baseEnv)
	var ws map[string]any
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ws) != nil || ws["start"] != "pool" {
		t.Fatalf("create after the discard: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if len(mountedSnapshots(envDir)) != 0 {
		t.Fatal("the discarded snapshot was rebuilt at once")
	}
}
