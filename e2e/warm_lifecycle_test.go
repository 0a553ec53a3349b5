package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWarmLifecycleStarts: with golden snapshots of the VM and workspace
// configurations present, every later start of an instance restores one
// (start: warm) instead of booting: `vm start` of a created VM and again
// after `vm stop`, the restart a workspace's next command makes after its
// VMM was killed, and `workspace reset`. The restored workspace mounts its
// own disk each time (what an exec wrote survives the restart, a reset
// drops it). Fails if any of them cold-boots.
func TestWarmLifecycleStarts(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	for _, args := range [][]string{{"prepare", baseEnv}, {"prepare", "--workspace", baseEnv}} {
		if r := pyro(t, env, args...); r.code != 0 {
			t.Fatalf("%v: exit %d %s %s", args, r.code, r.stdout, r.stderr)
		}
	}
	supervisorLog := func(kind, id string) string {
		b, _ := os.ReadFile(filepath.Join(home, kind, id, "supervisor.log"))
		return string(b)
	}

	// vm start, twice (created, then stopped).
	v, r := vmJSON(t, env, "create", baseEnv)
	if r.code != 0 {
		t.Fatalf("vm create: %d %s", r.code, r.stderr)
	}
	t.Cleanup(func() { vmJSON(t, env, "delete", v.VMID) })
	for _, when := range []string{"created", "stopped"} {
		var st struct {
			State string `json:"state"`
			Start string `json:"start"`
		}
		r := pyro(t, env, "vm", "start", "--json", v.VMID)
		if r.code != 0 {
			t.Fatalf("vm start (%s): %d %s", when, r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("vm start: %v: %s", err, r.stdout)
		}
		if st.State != "running" || st.Start != "warm" {
			t.Fatalf("vm start of a %s vm: state %q start %q, want running and warm; supervisor log:\n%s", when, st.State, st.Start, supervisorLog("vms", v.VMID))
		}
		if when == "created" {
			if s, _ := vmJSON(t, env, "stop", v.VMID); s.State != "stopped" {
				t.Fatalf("vm stop: %+v", s)
			}
		}
	}

	// A workspace: restart on the next command after its VMM died.
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
	id := w.WorkspaceID
	wsExec(t, env, id, "sh", "-c", "echo kept > f.txt")
	vmm := findPids(t, id)["vmm"]
	if vmm == 0 {
		t.Fatalf("no vmm process for %s", id)
	}
	syscall.Kill(vmm, syscall.SIGKILL)
	waitGone(t, vmm)
	if s := waitBroken(t, env, id); s.State != "broken" {
		t.Fatalf("after kill -9 of the vmm: %+v", s)
	}
	if m := wsExec(t, env, id, "cat", "f.txt"); m["stdout"] != "kept\n" {
		t.Fatalf("after the restart /workspace/f.txt reads %q", m["stdout"])
	}
	var s struct {
		State string `json:"state"`
		Start string `json:"start"`
	}
	mustWS(t, env, &s, "status", id)
	if s.State != "running" || s.Start != "warm" {
		t.Fatalf("restart on the next command: state %q start %q, want running and warm; supervisor log:\n%s", s.State, s.Start, supervisorLog("workspaces", id))
	}

	// workspace reset.
	mustWS(t, env, &s, "reset", id)
	if s.State != "running" || s.Start != "warm" {
		t.Fatalf("reset: state %q start %q, want running and warm; supervisor log:\n%s", s.State, s.Start, supervisorLog("workspaces", id))
	}
	if m := wsExec(t, env, id, "sh", "-c", "ls -A"); m["stdout"] != "" {
		t.Fatalf("after the reset /workspace holds %q", m["stdout"])
	}
}
