package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A push into a running workspace that nothing in the guest holds is
// written on the host too (workspace_hostpush_running.go): the guest lets
// go of /workspace, the host writes a new layer, QEMU switches to it.

// TestHostPushRunning pushes one tree into a running workspace on the host
// and again through the guest (PYRO_HOST_PUSH=0), compares what the guest
// sees of both, checks /workspace is writable after it, and that a restart
// (the chain read from the host's records) shows the same.
func TestHostPushRunning(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := hostPushTree(t)
	wsExec(t, env, id, "sh", "-c", "echo before > /workspace/before.txt")
	var r pushResult
	start := time.Now()
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h")
	t.Logf("host push into the running workspace: %s", time.Since(start))
	if r.Transfer != "host" {
		t.Fatalf("push into a running quiet workspace: transfer %q, want host", r.Transfer)
	}
	var g pushResult
	guestEnv := append(append([]string{}, env...), "PYRO_HOST_PUSH=0")
	mustWS(t, guestEnv, &g, "sync", "push", id, src, "--dest", "/workspace/g2")
	if g.Transfer == "host" {
		t.Fatal("PYRO_HOST_PUSH=0 pushed through the host")
	}
	if r.FileCount != g.FileCount || r.Bytes != g.Bytes {
		t.Errorf("counts: host %d files %d bytes, guest %d files %d bytes", r.FileCount, r.Bytes, g.FileCount, g.Bytes)
	}
	host, guest := guestListing(t, env, id, "/workspace/h"), guestListing(t, env, id, "/workspace/g2")
	if host != guest {
		t.Fatalf("host push differs from guest push:\nhost:\n%s\nguest:\n%s", host, guest)
	}
	if !strings.Contains(host, "./top/suid f 4755 0:0") || !strings.Contains(host, "./top/shared d 3775") {
		t.Fatalf("modes lost:\n%s", host)
	}
	// /workspace is mounted again, writable, and holds what it held.
	// (Snapshots around a push over a chain: see TestHostPushRunningSnapshots.)
	m := wsExec(t, env, id, "sh", "-c", "cat /workspace/before.txt && echo after > /workspace/after.txt && cat /workspace/after.txt && grep -c ' /workspace overlay ' /proc/mounts")
	if out := strings.TrimSpace(fmt.Sprint(m["stdout"])); out != "before\nafter\n1" {
		t.Fatalf("after the host push: %v", m)
	}
	all := guestListing(t, env, id, "/workspace")
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	if again := guestListing(t, env, id, "/workspace"); again != all {
		t.Fatalf("after a restart /workspace differs:\nbefore:\n%s\nafter:\n%s", all, again)
	}
}

// TestHostPushRunningBusy: a service with its cwd in /workspace holds it,
// so the push goes through the guest, and is whole; once the service
// stops, the same push goes through the host and gives the same tree.
func TestHostPushRunningBusy(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	mustWS(t, env, nil, "service", "start", id, "holder", "--", "sleep 600")
	src := hostPushTree(t)
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h")
	if r.Transfer == "host" {
		t.Fatal("a push into a workspace whose service holds /workspace went through the host")
	}
	if l := guestListing(t, env, id, "/workspace/h"); !strings.Contains(l, "./top/suid f 4755 0:0") {
		t.Fatalf("push through the guest:\n%s", l)
	}
	var st struct {
		Services []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"services"`
	}
	mustWS(t, env, &st, "service", "list", id)
	if len(st.Services) != 1 || st.Services[0].State != "running" {
		t.Fatalf("the service after the push: %+v", st)
	}
	// Once the service is gone, the same push goes through the host.
	mustWS(t, env, nil, "service", "stop", id, "holder")
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h2")
	if r.Transfer != "host" {
		t.Fatalf("push after the service stopped: transfer %q, want host", r.Transfer)
	}
	if a, b := guestListing(t, env, id, "/workspace/h"), guestListing(t, env, id, "/workspace/h2"); a != b {
		t.Fatalf("host push differs from guest push:\nguest:\n%s\nhost:\n%s", a, b)
	}
}

// TestHostPushRunningKilled kills QEMU with SIGKILL while a host push into
// the running workspace writes its layer, and once more right after the
// push answered: each time the restarted workspace holds the push whole
// or not at all, and a push after it succeeds.
func TestHostPushRunningKilled(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := randomTree(t, 400) // 100 MiB: debugfs runs for a while
	wsExec(t, env, id, "sh", "-c", "echo kept > /workspace/kept.txt")
	count := func() string {
		m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt; find /workspace/tree -type f 2>/dev/null | wc -l")
		return strings.TrimSpace(fmt.Sprint(m["stdout"]))
	}
	cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && !killed {
		if childPid(cmd.Process.Pid, "debugfs") != 0 {
			if vmm := findPids(t, id)["vmm"]; vmm > 0 {
				syscall.Kill(vmm, syscall.SIGKILL)
				killed = true
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	cmd.Wait()
	if !killed {
		t.Fatal("never caught the push's debugfs running")
	}
	waitBroken(t, env, id)
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	got := count()
	if got != "kept\n0" && got != "kept\n400" {
		t.Fatalf("after QEMU was killed mid-push: %q", got)
	}
	t.Logf("after QEMU was killed mid-push: %q", got)
	mustWS(t, env, nil, "reset", id)
	wsExec(t, env, id, "sh", "-c", "echo kept > /workspace/kept.txt")
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src)
	if r.Transfer != "host" || r.FileCount != 400 {
		t.Fatalf("push after the kill: %+v", r)
	}
	// Killed right after the push answered: the restart reads the new top.
	syscall.Kill(findPids(t, id)["vmm"], syscall.SIGKILL)
	waitBroken(t, env, id)
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	if got := count(); got != "kept\n400" {
		t.Fatalf("after QEMU was killed past the push: %q", got)
	}
}

// TestHostPushRunningSnapshots pushes into a running workspace whose upper
// layer is a chain (a snapshot froze it under an overlay), takes a
// snapshot after the push, and resets to each: the one before has none of
// the push, the one after all of it, and later writes go to the new layer.
func TestHostPushRunningSnapshots(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := hostPushTree(t)
	wsExec(t, env, id, "sh", "-c", "echo one > /workspace/one.txt")
	mustWS(t, env, nil, "snapshot", "create", id, "before")
	wsExec(t, env, id, "sh", "-c", "echo two > /workspace/two.txt")
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h")
	if r.Transfer != "host" {
		t.Fatalf("push over a chain: transfer %q, want host", r.Transfer)
	}
	pushed := guestListing(t, env, id, "/workspace/h")
	mustWS(t, env, nil, "snapshot", "create", id, "after")
	wsExec(t, env, id, "sh", "-c", "echo three > /workspace/three.txt")
	files := func() string {
		m := wsExec(t, env, id, "sh", "-c", "cd /workspace && ls -d *.txt h 2>/dev/null | tr '\\n' ' '")
		return strings.TrimSpace(fmt.Sprint(m["stdout"]))
	}
	if got := files(); got != "h one.txt three.txt two.txt" {
		t.Fatalf("after the push and a write: %q", got)
	}
	mustWS(t, env, nil, "reset", id, "--snapshot", "after")
	if got := files(); got != "h one.txt two.txt" {
		t.Fatalf("reset to the snapshot after the push: %q", got)
	}
	if again := guestListing(t, env, id, "/workspace/h"); again != pushed {
		t.Fatalf("the snapshot after the push differs:\n%s\n%s", pushed, again)
	}
	mustWS(t, env, nil, "reset", id, "--snapshot", "before")
	if got := files(); got != "one.txt" {
		t.Fatalf("reset to the snapshot before the push: %q", got)
	}
}

// TestHostPushRunningClientKilled kills the pyro process of a host push
// into a running workspace while it writes the new layer (the guest holds
// /workspace released): the guest mounts /workspace again by itself once
// the release ends (PYRO_PUSH_RELEASE_MS), as it was before the push, and
// the same push then succeeds.
func TestHostPushRunningClientKilled(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := randomTree(t, 400)
	wsExec(t, env, id, "sh", "-c", "echo kept > /workspace/kept.txt")
	cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
	cmd.Env = append(append(os.Environ(), env...), "PYRO_PUSH_RELEASE_MS=8000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; time.Sleep(2 * time.Millisecond) {
		if childPid(cmd.Process.Pid, "debugfs") != 0 {
			cmd.Process.Kill()
			killed = true
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatal("never caught the push's debugfs running")
	}
	// Released meanwhile: /workspace is an empty read-only placeholder.
	m := wsExec(t, env, id, "sh", "-c", "ls -A /workspace | wc -l; touch /workspace/x 2>/dev/null && echo wrote")
	if out := strings.TrimSpace(fmt.Sprint(m["stdout"])); out != "0" {
		t.Logf("while released: %q (the release may have ended already)", out)
	}
	var got string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt 2>/dev/null; find /workspace/tree -type f 2>/dev/null | wc -l")
		if got = strings.TrimSpace(fmt.Sprint(m["stdout"])); strings.HasPrefix(got, "kept") {
			break
		}
	}
	if got != "kept\n0" {
		t.Fatalf("after the guest's own remount: %q", got)
	}
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src)
	if r.Transfer != "host" || r.FileCount != 400 {
		t.Fatalf("push after the kill: %+v", r)
	}
	m = wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt; find /workspace/tree -type f | wc -l")
	if out := strings.TrimSpace(fmt.Sprint(m["stdout"])); out != "kept\n400" {
		t.Fatalf("after the retried push: %q", out)
	}
}
