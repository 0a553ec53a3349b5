package e2e

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type wsStatus struct {
	WorkspaceID   string  `json:"workspace_id"`
	State         string  `json:"state"`
	Reason        string  `json:"reason"`
	ResetCount    int     `json:"reset_count"`
	LastResetAt   *string `json:"last_reset_at"`
	WorkspaceSeed struct {
		Mode       string `json:"mode"`
		SourcePath string `json:"source_path"`
		FileCount  int    `json:"file_count"`
		Bytes      int64  `json:"bytes"`
	} `json:"workspace_seed"`
	Secrets             []map[string]string `json:"secrets"`
	ServiceCount        *int                `json:"service_count"`
	RunningServiceCount *int                `json:"running_service_count"`
	SupervisorPID       int                 `json:"supervisor_pid"`
}

// ws runs `pyro workspace ARGS --json` and decodes the object into out.
func ws(t *testing.T, env []string, out any, args ...string) result {
	t.Helper()
	r := pyro(t, env, append([]string{"workspace", "--json"}, args...)...)
	if out != nil && r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
			t.Fatalf("workspace %v: %v: %s", args, err, r.stdout)
		}
	}
	return r
}

// newWorkspace creates a baseEnv workspace in a fresh isolated home and
// deletes it when the test ends (after the test's own defers).
func newWorkspace(t *testing.T) (id string, env []string) {
	t.Helper()
	_, env = isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
	return w.WorkspaceID, env
}

func mustWS(t *testing.T, env []string, out any, args ...string) {
	t.Helper()
	if r := ws(t, env, out, args...); r.code != 0 {
		t.Fatalf("workspace %v: exit %d: %s %s", args, r.code, r.stdout, r.stderr)
	}
}

func wsExec(t *testing.T, env []string, id string, cmd ...string) map[string]any {
	t.Helper()
	var m map[string]any
	r := ws(t, env, &m, append([]string{"exec", id, "--"}, cmd...)...)
	if m == nil {
		json.Unmarshal([]byte(r.stdout), &m)
	}
	if m == nil {
		t.Fatalf("exec %v: exit %d %s %s", cmd, r.code, r.stdout, r.stderr)
	}
	return m
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func writeTarGz(t *testing.T, path string, files map[string]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	f.Close()
}

func TestWorkspaceFlow(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"a.txt": "hello\n", "src/main.py": "print(1)\n", "bin.dat": "\x00\x01\x02"})

	var w wsStatus
	mustWS(t, env, &w, "create", "--seed-path", seed, baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	if w.State != "running" || w.WorkspaceSeed.Mode != "directory" || w.WorkspaceSeed.FileCount != 3 || w.ResetCount != 0 || w.LastResetAt != nil {
		t.Fatalf("create: %+v", w)
	}
	if w.Secrets == nil || w.ServiceCount == nil || w.RunningServiceCount == nil {
		t.Fatalf("status lacks secrets/service counts: %+v", w)
	}

	// Exec runs in /workspace and state persists between calls.
	if m := wsExec(t, env, id, "pwd"); strings.TrimSpace(m["stdout"].(string)) != "/workspace" {
		t.Fatalf("cwd: %v", m)
	}
	wsExec(t, env, id, "sh -c 'echo more >> a.txt; rm src/main.py; echo new > new.txt; printf \"\\003\" >> bin.dat; export X=1'")
	if m := wsExec(t, env, id, "cat", "a.txt", "new.txt"); m["stdout"] != "hello\nmore\nnew\n" {
		t.Fatalf("state lost between execs: %v", m)
	}

	// Diff against the baseline.
	var d struct {
		Added, Modified, Deleted []string
		Changes                  []struct {
			Path, Status, Diff string
			Binary             bool
		}
	}
	mustWS(t, env, &d, "diff", id)
	if strings.Join(d.Added, ",") != "new.txt" || strings.Join(d.Deleted, ",") != "src/main.py" || strings.Join(d.Modified, ",") != "a.txt,bin.dat" {
		t.Fatalf("diff: %+v", d)
	}
	for _, c := range d.Changes {
		if c.Path == "a.txt" && !strings.Contains(c.Diff, "+more") {
			t.Errorf("a.txt diff: %q", c.Diff)
		}
		if c.Path == "bin.dat" && !c.Binary {
			t.Errorf("bin.dat not marked binary")
		}
	}

	// Sync push of an archive into a subdirectory; dest outside /workspace refused.
	arch := filepath.Join(t.TempDir(), "more.tgz")
	writeTarGz(t, arch, map[string]string{"lib/x.txt": "xx\n"})
	var sr map[string]any
	mustWS(t, env, &sr, "sync", "push", id, arch, "--dest", "/workspace/vendor")
	if m := wsExec(t, env, id, "cat", "vendor/lib/x.txt"); m["stdout"] != "xx\n" {
		t.Fatalf("sync push: %v", m)
	}
	if r := ws(t, env, nil, "sync", "push", id, arch, "--dest", "/etc"); r.code != 2 {
		t.Fatalf("push outside /workspace: %d %s", r.code, r.stderr)
	}

	// Snapshots: named one, list includes baseline, baseline undeletable.
	mustWS(t, env, nil, "snapshot", "create", id, "step1")
	var sl struct{ Snapshots []struct{ Name string } }
	mustWS(t, env, &sl, "snapshot", "list", id)
	if len(sl.Snapshots) != 2 || sl.Snapshots[0].Name != "baseline" || sl.Snapshots[1].Name != "step1" {
		t.Fatalf("snapshot list: %+v", sl)
	}
	if r := ws(t, env, nil, "snapshot", "delete", id, "baseline"); r.code == 0 {
		t.Fatal("baseline deleted")
	}

	// Export a file and a directory.
	out := t.TempDir()
	mustWS(t, env, nil, "export", id, "a.txt", "--output", filepath.Join(out, "a.txt"))
	mustWS(t, env, nil, "export", id, "vendor", "--output", filepath.Join(out, "vendor"))
	if b, _ := os.ReadFile(filepath.Join(out, "a.txt")); string(b) != "hello\nmore\n" {
		t.Fatalf("export file: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "vendor", "lib", "x.txt")); string(b) != "xx\n" {
		t.Fatalf("export dir: %q", b)
	}
	if r := ws(t, env, nil, "export", id, "a.txt", "--output", filepath.Join(out, "a.txt")); r.code == 0 {
		t.Fatal("export overwrote a host file")
	}

	// Logs: the history of execs.
	var logs struct{ Entries []struct{ Command []string } }
	mustWS(t, env, &logs, "logs", id)
	if len(logs.Entries) != 4 {
		t.Fatalf("history has %d entries, want 4", len(logs.Entries))
	}

	// Reset to the baseline: fresh root, /workspace as created, history cleared.
	wsExec(t, env, id, "sh -c 'echo root-change > /etc/pyro-test'")
	mustWS(t, env, &w, "reset", id)
	if w.ResetCount != 1 || w.LastResetAt == nil {
		t.Fatalf("reset: %+v", w)
	}
	m := wsExec(t, env, id, "sh -c 'cat a.txt; ls; cat /etc/pyro-test 2>&1'")
	if !strings.HasPrefix(m["stdout"].(string), "hello\na.txt\nbin.dat\nsrc\n") || !strings.Contains(m["stdout"].(string), "No such file") {
		t.Fatalf("after reset: %q", m["stdout"])
	}
	mustWS(t, env, &logs, "logs", id)
	if len(logs.Entries) != 1 {
		t.Fatalf("history after reset: %d", len(logs.Entries))
	}
	// Reset to the named snapshot.
	mustWS(t, env, &w, "reset", id, "--snapshot", "step1")
	if m := wsExec(t, env, id, "cat", "new.txt"); m["stdout"] != "new\n" || w.ResetCount != 2 {
		t.Fatalf("reset to step1: %v %+v", m, w)
	}
	mustWS(t, env, nil, "delete", id)
	if r := ws(t, env, nil, "status", id); r.code != 3 {
		t.Fatalf("status after delete: %d", r.code)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "workspaces")); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
}

// TestWorkspaceSurvivesKill9 kills the VMM, then the supervisor: what an
// exec finished writing is still there for the next command, which brings
// the workspace back on the same disk.
func TestWorkspaceSurvivesKill9(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	for i, victim := range []string{"vmm", "supervisor"} {
		content := "data-" + victim
		wsExec(t, env, id, "sh -c 'head -c 3000000 /dev/urandom > big.bin; echo "+content+" > f"+string(rune('0'+i))+".txt'")
		pids := findPids(t, id)
		pid := pids[victim]
		if pid == 0 {
			t.Fatalf("no %s process found for %s: %v", victim, id, pids)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid)
		s := waitBroken(t, env, id)
		if s.State != "broken" || s.Reason == "" {
			t.Fatalf("after kill -9 of the %s: %+v", victim, s)
		}
		m := wsExec(t, env, id, "sh -c 'cat f*.txt; wc -c < big.bin'")
		want := ""
		for j := 0; j <= i; j++ {
			want += "data-" + []string{"vmm", "supervisor"}[j] + "\n"
		}
		if m["stdout"] != want+"3000000\n" {
			t.Fatalf("after kill -9 of the %s the workspace has %q, want %q", victim, m["stdout"], want)
		}
	}
}

// findPids finds the supervisor and VMM processes of an instance id.
func findPids(t *testing.T, id string) map[string]int {
	t.Helper()
	out := map[string]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		pid := 0
		for _, c := range e.Name() {
			if c < '0' || c > '9' {
				pid = -1
				break
			}
		}
		if pid < 0 {
			continue
		}
		n := 0
		for _, c := range e.Name() {
			n = n*10 + int(c-'0')
		}
		if len(args) > 2 && args[1] == "__supervise" && strings.HasSuffix(args[2], "/"+id) {
			out["supervisor"] = n
		}
		if strings.Contains(args[0], "qemu-system") {
			// QEMU names its VM directory in -name guest=DIR (its cwd is "/").
			for _, a := range args {
				if strings.HasPrefix(a, "guest=") && strings.HasSuffix(a, "/"+id) {
					out["vmm"] = n
				}
			}
		}
	}
	return out
}

// waitBroken polls the status of workspace id after its VMM or supervisor
// was killed until it leaves running (10 s at most) and returns the last
// one. The supervisor notices within moments, but the VMM may be a zombie
// for a few ms before its waiter collects it, and a health call in that
// window finds the agent gone: unresponsive, on the way to broken.
func waitBroken(t *testing.T, env []string, id string) wsStatus {
	t.Helper()
	var s wsStatus
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mustWS(t, env, &s, "status", id)
		if s.State != "running" && s.State != "unresponsive" || time.Now().After(deadline) {
			return s
		}
	}
}
