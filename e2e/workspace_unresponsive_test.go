package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWorkspaceUnresponsive freezes a workspace's VMM (SIGSTOP): its status
// says unresponsive, with the typed reason, instead of running; the next
// command restarts it on the same disk, so what was written is still there.
func TestWorkspaceUnresponsive(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	wsExec(t, env, id, "echo kept > kept.txt")
	vmm := findPids(t, id)["vmm"]
	if vmm == 0 {
		t.Fatal("no VMM process")
	}
	if err := syscall.Kill(vmm, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(vmm, syscall.SIGCONT) // on failure, let it be stopped

	start := time.Now()
	r := ws(t, env, nil, "status", id)
	var st struct {
		State      string `json:"state"`
		ReasonKind string `json:"reason_kind"`
		Reason     string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status: %v\n%s%s", err, r.stdout, r.stderr)
	}
	if st.State != "unresponsive" || st.ReasonKind != "agent_not_answering" || !strings.Contains(st.Reason, "health") {
		t.Fatalf("status of a frozen guest: %+v", st)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("status took %s", d)
	}
	// The next command brings it back on the same disk.
	m := wsExec(t, env, id, "cat kept.txt")
	if m["stdout"] != "kept\n" {
		t.Fatalf("after recovery: %v", m)
	}
	var w wsStatus
	mustWS(t, env, &w, "status", id)
	if w.State != "running" {
		t.Fatalf("after recovery: %+v", w)
	}
	if pids := findPids(t, id); pids["vmm"] == vmm || pids["vmm"] == 0 {
		t.Fatalf("not restarted: old vmm %d, now %v", vmm, pids)
	}
}
