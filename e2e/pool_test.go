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

// Warm pool (issue #14): `pyro pool start` keeps restored, paused guests
// and a `pyro run` of the same configuration gets one (start: pool). At
// most two guests exist at once: the pool's one and its refill.

// poolProbe reads /dev/urandom before anything else, then the identity two
// pooled guests must not share, then the guest's clock.
const poolProbe = `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; hostname; cat /etc/machine-id; date +%s`

type poolStatus struct {
	Pools []struct {
		Environment   string  `json:"environment"`
		Size          int     `json:"size"`
		Ready         int     `json:"ready"`
		Leased        int     `json:"leased"`
		Served        int     `json:"served"`
		Failures      int     `json:"failures"`
		LastError     string  `json:"last_error"`
		LastHandoutMS float64 `json:"last_handout_ms"`
		PID           int     `json:"pid"`
	} `json:"pools"`
}

func poolState(t *testing.T, env []string) poolStatus {
	t.Helper()
	r := pyro(t, env, "pool", "status", "--json")
	var st poolStatus
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("pool status: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	return st
}

// waitPool waits until the one pool has ready guests and served runs.
func waitPool(t *testing.T, env []string, served int, limit time.Duration) poolStatus {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := poolState(t, env)
		if len(st.Pools) == 1 && st.Pools[0].Ready >= 1 && st.Pools[0].Served == served {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool not ready with %d served after %s: %+v", served, limit, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startPool starts `pyro pool start --size 1` of baseEnv with the extra
// flags (e.g. --workspace), killed when the test ends.
func startPool(t *testing.T, env []string, flags ...string) *exec.Cmd {
	t.Helper()
	args := append(append([]string{"pool", "start", "--json", "--size", "1"}, flags...), baseEnv)
	cmd := exec.Command(pyroBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func TestPool(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := baseOnlyHome(t)
	killHomeOnCleanup(t, home)
	// A warm start first, so the pool's first guest is a restore (the
	// snapshot of this configuration is built here when missing).
	if m, r := runJSON(t, env, baseEnv, "--", "true"); r.code != 0 {
		t.Fatalf("warm-up run: %v %s", m, r.stderr)
	}

	pool := startPool(t, env)
	waitPool(t, env, 0, 120*time.Second)

	probe := func(name string) []string {
		m, r := runJSON(t, env, baseEnv, "--", "sh", "-c", poolProbe)
		if r.code != 0 || m["start"] != "pool" {
			t.Fatalf("%s: exit %d, start %v, want pool: %v %s", name, r.code, m["start"], m, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(m["stdout"].(string)), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s: probe output %q", name, lines)
		}
		// The clock is the host's, set at hand-out (not the snapshot's).
		secs, _ := strconv.ParseInt(lines[3], 10, 64)
		if d := time.Now().Unix() - secs; d < -5 || d > 30 {
			t.Errorf("%s: guest clock %d is %d s off the host's", name, secs, d)
		}
		t.Logf("%s: hand-out (boot_ms) %v ms, total %v ms, wall %s", name, m["boot_ms"], m["total_ms"], r.elapsed.Round(time.Millisecond))
		return lines[:3]
	}
	a := probe("first run")
	// The pool refills in the background.
	st := waitPool(t, env, 1, 60*time.Second)
	t.Logf("refilled; pool's last hand-out %.1f ms", st.Pools[0].LastHandoutMS)
	b := probe("second run")
	for i, what := range []string{"urandom", "hostname", "machine-id"} {
		if a[i] == "" || a[i] == b[i] {
			t.Errorf("%s: %q and %q, want two different values", what, a[i], b[i])
		}
	}
	// Another configuration is not served by this pool.
	if m, _ := runJSON(t, env, "--mem-mib", "512", baseEnv, "--", "true"); m["start"] == "pool" {
		t.Errorf("a 512 MiB run was served by the 1024 MiB pool: %v", m)
	}

	// pool stop: the pool process exits and leaves nothing behind.
	stopped := time.Now()
	if r := pyro(t, env, "pool", "stop", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"count": 1`) {
		t.Fatalf("pool stop: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if err := pool.Wait(); err != nil {
		t.Errorf("pool start exited with %v after pool stop", err)
	}
	requireNothingLeft(t, home, stopped)
	// An empty or absent pool: runs start the usual way.
	if m, r := runJSON(t, env, baseEnv, "--", "true"); r.code != 0 || m["start"] == "pool" {
		t.Fatalf("run without a pool: exit %d, start %v", r.code, m["start"])
	}

	// A pool killed with SIGKILL takes its guests with it; the next pool
	// status reaps their directories.
	pool = startPool(t, env)
	waitPool(t, env, 0, 120*time.Second)
	_ = pool.Process.Signal(syscall.SIGKILL)
	_ = pool.Wait()
	killed := time.Now()
	deadline := killed.Add(cleanupBound)
	for len(qemuProcessesFor(home)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if st := poolState(t, env); len(st.Pools) != 0 {
		t.Errorf("a killed pool is still listed: %+v", st)
	}
	if socks, _ := filepath.Glob(filepath.Join(home, "pools", "*.sock")); len(socks) != 0 {
		t.Errorf("a killed pool's socket is left: %v", socks)
	}
	requireNothingLeft(t, home, killed)
}
