package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Workspace pools (issue #14): `pyro pool start --workspace` keeps whole
// workspaces ready and `pyro workspace create` of the same configuration
// claims one (start: pool). A claimed workspace is its creator's: it runs
// commands and file operations, has its own identity, and outlives the
// pool; what the pool had not handed out goes with it, also when it is
// killed.

// workspaceDirs lists the directories under home's workspaces/.
func workspaceDirs(home string) []string {
	ents, _ := os.ReadDir(filepath.Join(home, "workspaces"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestPoolWorkspace(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := baseOnlyHome(t)
	killHomeOnCleanup(t, home)
	// The workspace configuration's memory snapshot first, so the pool's
	// guests are restores.
	if r := pyro(t, env, "prepare", "--workspace", baseEnv); r.code != 0 {
		t.Fatalf("prepare: %s %s", r.stdout, r.stderr)
	}
	pool := startPool(t, env, "--workspace")
	waitPool(t, env, 0, 120*time.Second)

	create := func(name string, extra ...string) (string, []string) {
		r := pyro(t, env, append(append([]string{"workspace", "create", "--json"}, extra...), baseEnv)...)
		var ws map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ws) != nil {
			t.Fatalf("%s: create: exit %d: %s %s", name, r.code, r.stdout, r.stderr)
		}
		id, _ := ws["workspace_id"].(string)
		if ws["start"] != "pool" || ws["state"] != "running" || id == "" {
			t.Fatalf("%s: start %v state %v, want a running workspace from the pool: %v", name, ws["start"], ws["state"], ws)
		}
		t.Logf("%s: create %s wall, hand-out (boot_ms) %v ms", name, r.elapsed.Round(time.Millisecond), ws["boot_ms"])
		x := pyro(t, env, "workspace", "exec", "--json", id, "--", "sh", "-c", poolProbe+"; ls -A /workspace | wc -l")
		var res map[string]any
		if x.code != 0 || json.Unmarshal([]byte(x.stdout), &res) != nil || res["exit_code"] != float64(0) {
			t.Fatalf("%s: exec: exit %d: %s %s", name, x.code, x.stdout, x.stderr)
		}
		lines := strings.Split(strings.TrimSpace(res["stdout"].(string)), "\n")
		if len(lines) != 5 {
			t.Fatalf("%s: probe output %q", name, lines)
		}
		// /workspace is empty but for ext4's lost+found.
		if n := strings.TrimSpace(lines[4]); n != "1" && n != "0" {
			t.Errorf("%s: a fresh /workspace holds %s entries", name, n)
		}
		return id, lines[:3]
	}
	a, pa := create("first create")
	if r := pyro(t, env, "workspace", "exec", a, "--", "sh", "-c", "echo kept > /workspace/note.txt"); r.code != 0 {
		t.Fatalf("write: %s %s", r.stdout, r.stderr)
	}
	if r := pyro(t, env, "workspace", "file", "read", a, "note.txt", "--content-only"); r.code != 0 || r.stdout != "kept\n" {
		t.Fatalf("file read: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	// The pool refills in the background; the next create gets another
	// workspace with an identity of its own.
	waitPool(t, env, 1, 60*time.Second)
	// With a secret: materialised in this workspace only.
	const secret = "pool-secret-value-4711"
	b, pb := create("second create", "--secret", "TOKEN="+secret)
	if r := pyro(t, env, "workspace", "exec", b, "--", "sh", "-c", "wc -c < /run/pyro-secrets/TOKEN"); r.code != 0 || strings.TrimSpace(r.stdout) != strconv.Itoa(len(secret)) {
		t.Errorf("secret in the pooled workspace: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := pyro(t, env, "workspace", "exec", b, "--secret-env", "TOKEN", "--", "printenv", "TOKEN"); r.code != 0 || strings.Contains(r.stdout, secret) {
		t.Errorf("secret not redacted: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := pyro(t, env, "workspace", "exec", a, "--", "test", "!", "-e", "/run/pyro-secrets/TOKEN"); r.code != 0 {
		t.Errorf("the other workspace has the secret: %s %s", r.stdout, r.stderr)
	}
	for i, what := range []string{"urandom", "hostname", "machine-id"} {
		if pa[i] == "" || pa[i] == pb[i] {
			t.Errorf("%s: %q and %q, want two different values", what, pa[i], pb[i])
		}
	}
	// Nothing of one workspace shows in the other.
	if r := pyro(t, env, "workspace", "exec", b, "--", "test", "!", "-e", "/workspace/note.txt"); r.code != 0 {
		t.Errorf("the second workspace sees the first one's file: %s %s", r.stdout, r.stderr)
	}
	claimed := []string{a, b}
	sort.Strings(claimed)

	// pool stop: the pool's unclaimed workspace goes, the claimed ones stay.
	waitPool(t, env, 2, 60*time.Second)
	if r := pyro(t, env, "pool", "stop", "--json"); r.code != 0 {
		t.Fatalf("pool stop: %s %s", r.stdout, r.stderr)
	}
	if err := pool.Wait(); err != nil {
		t.Errorf("pool start exited with %v after pool stop", err)
	}
	requireOnly := func(what string, since time.Time) {
		t.Helper()
		for {
			dirs, qemus := workspaceDirs(home), qemuProcessesFor(home)
			if strings.Join(dirs, " ") == strings.Join(claimed, " ") && len(qemus) == 2 {
				t.Logf("%s: only the claimed workspaces left after %s", what, time.Since(since).Round(time.Millisecond))
				return
			}
			if time.Since(since) > cleanupBound {
				t.Fatalf("%s: left %q with %d QEMUs, want only %q", what, dirs, len(qemus), claimed)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	requireOnly("pool stop", time.Now())
	if r := pyro(t, env, "workspace", "file", "read", a, "note.txt", "--content-only"); r.code != 0 || r.stdout != "kept\n" {
		t.Fatalf("a claimed workspace after pool stop: exit %d %q %s", r.code, r.stdout, r.stderr)
	}

	// A pool killed with SIGKILL: its unclaimed workspace ends by itself.
	pool = startPool(t, env, "--workspace")
	waitPool(t, env, 0, 120*time.Second)
	_ = pool.Process.Signal(syscall.SIGKILL)
	_ = pool.Wait()
	requireOnly("pool killed", time.Now())
	if st := poolState(t, env); len(st.Pools) != 0 {
		t.Errorf("a killed pool is still listed: %+v", st)
	}
	if r := pyro(t, env, "workspace", "exec", b, "--", "true"); r.code != 0 {
		t.Fatalf("a claimed workspace after the pool was killed: %s %s", r.stdout, r.stderr)
	}
	for _, id := range claimed {
		if r := pyro(t, env, "workspace", "delete", id); r.code != 0 {
			t.Fatalf("delete: %s %s", r.stdout, r.stderr)
		}
	}
	requireNothingLeft(t, home, time.Now())
}
