package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A push into a running workspace that takes checkpoints (the MCP
// default) is written on the host too, and the layer it replaces is the
// push's checkpoint (workspace_hostpush_checkpoint.go).

// pushedPaths is what a push of src to /workspace/<dest> adds, as diff
// names it: dest itself and every entry below it; and the bytes of its
// regular files.
func pushedPaths(t *testing.T, src, dest string) ([]string, int64) {
	t.Helper()
	out := []string{dest}
	var bytes int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out = append(out, dest+"/"+filepath.ToSlash(rel))
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out, bytes
}

// checkPushedSince checks what checkpoint n, a push of src to
// /workspace/h (hostPushTree), says: diff --since it names exactly the
// pushed paths, which it returns; the next command (its checkpoint taken
// the usual way) sees the push, and then checkpoint n says how many bytes
// the push changed.
func checkPushedSince(t *testing.T, env []string, id, src string, n int) []string {
	t.Helper()
	var d struct{ Added, Modified, Deleted []string }
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(n))
	want, bytes := pushedPaths(t, src, "h")
	if strings.Join(d.Added, ",") != strings.Join(want, ",") || len(d.Modified)+len(d.Deleted) != 0 {
		t.Fatalf("diff --since %d after the push:\n%+v\nwant added:\n%v", n, d, want)
	}
	m := wsExec(t, env, id, "sh", "-c", "cat /workspace/h/top/d/e/deep.txt && echo later > /workspace/later.txt")
	if out := strings.TrimSpace(fmt.Sprint(m["stdout"])); out != "deep" {
		t.Fatalf("after the push: %v", m)
	}
	var cl checkpointBytes
	mustWS(t, env, &cl, "checkpoint", "list", id)
	for _, cp := range cl.Checkpoints {
		if cp.Number == n && cp.BytesChanged != bytes {
			t.Fatalf("the push's checkpoint says %d bytes changed, want %d", cp.BytesChanged, bytes)
		}
	}
	return want
}

type checkpointBytes struct {
	Checkpoints []struct {
		Number       int    `json:"number"`
		Command      string `json:"command"`
		BytesChanged int64  `json:"bytes_changed"`
	} `json:"checkpoints"`
}

// TestHostPushCheckpointed: a push into a running checkpointed workspace
// goes through the host; checkpoint list shows it; diff --since its
// checkpoint names exactly the pushed paths; the next command's
// checkpoint says how many bytes it changed; undo to it returns the exact
// tree before it (types, modes, owners, ns times, contents); a push after
// the undo is served on the host again.
func TestHostPushCheckpointed(t *testing.T) {
	requireConfinable(t)
	env, id, _ := checkpointedWorkspace(t)
	wsExec(t, env, id, "sh -c 'echo y >> a.txt; echo n > new.txt'")
	before := guestListing(t, env, id, "/workspace")
	src := hostPushTree(t)
	var r pushResult
	start := time.Now()
	res := ws(t, append(env, "PYRO_LOG=debug"), &r, "sync", "push", id, src, "--dest", "/workspace/h")
	t.Logf("host push into the checkpointed workspace: %s", time.Since(start))
	if res.code != 0 || r.Transfer != "host" {
		t.Fatalf("push into a running checkpointed workspace: exit %d, transfer %q, want host: %s", res.code, r.Transfer, res.stderr)
	}
	// The exec before it (the listing's) ended quiet and nothing ran
	// since: the guest released /workspace without listing it again, and
	// the checkpoint took the listing of that exec's quiet report.
	if !strings.Contains(res.stderr, "listing=pending") {
		t.Fatalf("the push after a quiet exec listed the upper layer again:\n%s", res.stderr)
	}
	var cl checkpointBytes
	mustWS(t, env, &cl, "checkpoint", "list", id)
	last := cl.Checkpoints[len(cl.Checkpoints)-1]
	if want := "sync push " + src + " /workspace/h"; last.Command != want {
		t.Fatalf("newest checkpoint %+v, want the push's (%q)", last, want)
	}
	n := last.Number
	want := checkPushedSince(t, env, id, src, n)
	var d struct{ Added, Modified, Deleted []string }
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(n+1))
	if strings.Join(d.Added, ",") != "later.txt" || len(d.Modified)+len(d.Deleted) != 0 {
		t.Fatalf("diff --since %d: %+v", n+1, d)
	}
	var u struct {
		Checkpoint int    `json:"checkpoint"`
		Command    string `json:"command"`
	}
	mustWS(t, env, &u, "undo", id, "--to", strconv.Itoa(n))
	if u.Checkpoint != n || !strings.HasPrefix(u.Command, "sync push ") {
		t.Fatalf("undo: %+v", u)
	}
	if got := guestListing(t, env, id, "/workspace"); got != before {
		t.Fatalf("undo of the push is not the tree before it:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h")
	if r.Transfer != "host" {
		t.Fatalf("push after the undo: transfer %q, want host", r.Transfer)
	}
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(n+2))
	if strings.Join(d.Added, ",") != strings.Join(want, ",") || len(d.Modified)+len(d.Deleted) != 0 {
		t.Fatalf("diff --since the second push: %+v", d)
	}
}

// TestHostPushCheckpointedKilled kills QEMU with SIGKILL while a host push
// into a running checkpointed workspace writes its layer, and once more
// right after a push answered: each time the workspace comes back with
// the push whole or not at all, and undo to the push's checkpoint (when
// it was recorded) returns the tree before it.
func TestHostPushCheckpointedKilled(t *testing.T) {
	requireConfinable(t)
	env, id, _ := checkpointedWorkspace(t)
	src := randomTree(t, 400) // 100 MiB: debugfs runs for a while
	wsExec(t, env, id, "sh -c 'echo kept > kept.txt'")
	before := guestListing(t, env, id, "/workspace")
	count := func() string {
		m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt; find /workspace/tree -type f 2>/dev/null | wc -l")
		return strings.TrimSpace(fmt.Sprint(m["stdout"]))
	}
	// undoPush undoes to the first checkpoint of a push taken after
	// checkpoint since: a push whose switch the kill cut short may have
	// landed all the same, and the push through the guest that follows
	// then takes its own checkpoint, over the pushed tree.
	undoPush := func(what string, since int) {
		t.Helper()
		var cl checkpointList
		mustWS(t, env, &cl, "checkpoint", "list", id)
		t.Logf("%s: checkpoints %+v", what, cl.Checkpoints)
		for _, cp := range cl.Checkpoints {
			if cp.Number > since && strings.HasPrefix(cp.Command, "sync push ") {
				mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(cp.Number))
				if got := guestListing(t, env, id, "/workspace"); got != before {
					t.Fatalf("%s: undo of the push:\nbefore:\n%s\nafter:\n%s", what, before, got)
				}
				return
			}
		}
		t.Logf("%s: no checkpoint of the push recorded", what)
	}
	since, _ := lastCheckpoint(t, env, id)
	cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
	cmd.Env = append(os.Environ(), env...)
	var outb strings.Builder
	cmd.Stdout, cmd.Stderr = &outb, &outb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; time.Sleep(2 * time.Millisecond) {
		if childPid(cmd.Process.Pid, "debugfs") != 0 {
			if vmm := findPids(t, id)["vmm"]; vmm > 0 {
				syscall.Kill(vmm, syscall.SIGKILL)
				killed = true
			}
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatal("never caught the push's debugfs running")
	}
	t.Logf("the killed push said: %s", outb.String())
	waitBroken(t, env, id)
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	got := count()
	if got != "kept\n0" && got != "kept\n400" {
		t.Fatalf("after QEMU was killed mid-push: %q", got)
	}
	t.Logf("after QEMU was killed mid-push: %q", got)
	undoPush("killed mid-push", since)
	since, _ = lastCheckpoint(t, env, id)
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src)
	if r.Transfer != "host" || r.FileCount != 400 {
		t.Fatalf("push after the kill: %+v", r)
	}
	// Killed right after the push answered: the restart reads the push,
	// and its checkpoint still undoes it.
	syscall.Kill(findPids(t, id)["vmm"], syscall.SIGKILL)
	waitBroken(t, env, id)
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	if got := count(); got != "kept\n400" {
		t.Fatalf("after QEMU was killed past the push: %q", got)
	}
	undoPush("killed past the push", since)
}

// TestHostPushCheckpointedClientOrSupervisorKilled kills the pushing pyro
// process while it writes the layer (the guest holds /workspace released):
// the guest mounts the tree before the push again by itself, exactly, and
// a push after it is served on the host; then kills the workspace's
// supervisor at the same point: the workspace comes back with the push
// whole or not at all, and undo to the push's first checkpoint returns
// the tree before it.
func TestHostPushCheckpointedClientOrSupervisorKilled(t *testing.T) {
	requireConfinable(t)
	env, id, _ := checkpointedWorkspace(t)
	src := randomTree(t, 400)
	wsExec(t, env, id, "sh -c 'echo kept > kept.txt'")
	before := guestListing(t, env, id, "/workspace")
	killAtDebugfs := func(kill func(cmd *exec.Cmd)) {
		t.Helper()
		cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
		cmd.Env = append(append(os.Environ(), env...), "PYRO_PUSH_RELEASE_MS=8000")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killed := false
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; time.Sleep(2 * time.Millisecond) {
			if childPid(cmd.Process.Pid, "debugfs") != 0 {
				kill(cmd)
				killed = true
			}
		}
		cmd.Wait()
		if !killed {
			t.Fatal("never caught the push's debugfs running")
		}
	}

	// The client: the guest remounts the old tree once the release ends.
	since, _ := lastCheckpoint(t, env, id)
	killAtDebugfs(func(cmd *exec.Cmd) { cmd.Process.Kill() })
	var got string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt 2>/dev/null")
		if got = strings.TrimSpace(fmt.Sprint(m["stdout"])); got == "kept" {
			break
		}
	}
	if got != "kept" {
		t.Fatalf("/workspace after the pushing client was killed: %q", got)
	}
	if l := guestListing(t, env, id, "/workspace"); l != before {
		t.Fatalf("after the client was killed mid-push:\nbefore:\n%s\nafter:\n%s", before, l)
	}
	var cl checkpointList
	mustWS(t, env, &cl, "checkpoint", "list", id)
	for _, cp := range cl.Checkpoints {
		if cp.Number > since && strings.HasPrefix(cp.Command, "sync push ") {
			t.Fatalf("a checkpoint of the killed push was recorded: %+v", cp)
		}
	}

	// The supervisor (its QEMU goes with it).
	since, _ = lastCheckpoint(t, env, id)
	killAtDebugfs(func(*exec.Cmd) {
		if sup := findPids(t, id)["supervisor"]; sup > 0 {
			syscall.Kill(sup, syscall.SIGKILL)
		}
	})
	waitBroken(t, env, id)
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt; find /workspace/tree -type f 2>/dev/null | wc -l")
	if got := strings.TrimSpace(fmt.Sprint(m["stdout"])); got != "kept\n0" && got != "kept\n400" {
		t.Fatalf("after the supervisor was killed mid-push: %q", got)
	} else {
		t.Logf("after the supervisor was killed mid-push: %q", got)
	}
	mustWS(t, env, &cl, "checkpoint", "list", id)
	for _, cp := range cl.Checkpoints {
		if cp.Number > since && strings.HasPrefix(cp.Command, "sync push ") {
			mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(cp.Number))
			if l := guestListing(t, env, id, "/workspace"); l != before {
				t.Fatalf("undo of the push the supervisor's kill cut short:\nbefore:\n%s\nafter:\n%s", before, l)
			}
			break
		}
	}
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/again")
	if r.Transfer != "host" || r.FileCount != 400 {
		t.Fatalf("push after the kills: %+v", r)
	}
}

// TestHostPushStoppedCheckpointed: a push into a STOPPED checkpointed
// workspace is written on the host and its checkpoint taken there, the
// workspace left stopped (no guest started); the checkpoint's listing,
// read from the upper image, is exact: diff --since it names exactly the
// pushed paths (a deleted seed file's whiteout, an appended file and a
// directory made by the guest all untouched), the next command's
// checkpoint says how many bytes it changed, undo to it returns the tree
// before it. A kill -9 of the pushing process while debugfs writes
// leaves the workspace as it was, without a checkpoint of that push.
func TestHostPushStoppedCheckpointed(t *testing.T) {
	requireConfinable(t)
	env, id, _ := checkpointedWorkspace(t)
	wsExec(t, env, id, "sh -c 'echo y >> a.txt; rm docs/readme.md; mkdir -p made/sub && echo n > made/sub/new.txt'")
	before := guestListing(t, env, id, "/workspace")
	mustWS(t, env, nil, "stop", id)
	stopped := func(what string) {
		t.Helper()
		var w wsStatus
		mustWS(t, env, &w, "status", id)
		if w.State != "stopped" {
			t.Fatalf("%s: the workspace is %s, want stopped", what, w.State)
		}
	}
	// Killed while debugfs writes the pushed layer.
	since, _ := lastCheckpoint(t, env, id)
	cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, randomTree(t, 400), "--dest", "/workspace/killed")
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; time.Sleep(2 * time.Millisecond) {
		if childPid(cmd.Process.Pid, "debugfs") != 0 {
			killed = cmd.Process.Signal(syscall.SIGKILL) == nil
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatal("never caught the push's debugfs running")
	}
	if n, _ := lastCheckpoint(t, env, id); n != since {
		t.Fatalf("a push killed while it wrote left checkpoint %d", n)
	}
	stopped("after the killed push")

	src := hostPushTree(t)
	var r pushResult
	start := time.Now()
	res := ws(t, append(env, "PYRO_LOG=debug"), &r, "sync", "push", id, src, "--dest", "/workspace/h")
	t.Logf("host push into the stopped checkpointed workspace: %s", time.Since(start))
	if res.code != 0 || r.Transfer != "host" || !strings.Contains(res.stderr, "listing=host") {
		t.Fatalf("push into a stopped checkpointed workspace: exit %d, transfer %q, want host with its listing made on the host: %s", res.code, r.Transfer, res.stderr)
	}
	stopped("after the push")
	var cl checkpointBytes
	mustWS(t, env, &cl, "checkpoint", "list", id)
	last := cl.Checkpoints[len(cl.Checkpoints)-1]
	if want := "sync push " + src + " /workspace/h"; last.Command != want || last.Number != since+1 {
		t.Fatalf("newest checkpoint %+v, want the push's (%q) after %d", last, want, since)
	}
	n := last.Number
	mustWS(t, env, nil, "start", id)
	checkPushedSince(t, env, id, src, n)
	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(n))
	if got := guestListing(t, env, id, "/workspace"); got != before {
		t.Fatalf("undo of the push is not the tree before it:\nbefore:\n%s\nafter:\n%s", before, got)
	}
}
