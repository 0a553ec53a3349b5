package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type forkResult struct {
	SourceWorkspaceID string `json:"source_workspace_id"`
	Forks             []struct {
		WorkspaceID       string   `json:"workspace_id"`
		State             string   `json:"state"`
		Start             string   `json:"start"`
		InheritedServices []string `json:"inherited_services"`
		InheritedShells   []string `json:"inherited_shells"`
	} `json:"forks"`
	SourcePausedMS int64    `json:"source_paused_ms"`
	DurationMS     int64    `json:"duration_ms"`
	NotInherited   []string `json:"not_inherited"`
}

// shellSees writes line into a shell and reads until want shows up.
func shellSees(t *testing.T, env []string, id, shell, line, want string) bool {
	t.Helper()
	mustWS(t, env, nil, "shell", "write", id, shell, "--input", line)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var r struct {
			Output string `json:"output"`
		}
		mustWS(t, env, &r, "shell", "read", id, shell, "--plain", "--wait-for-idle-ms", "300")
		if strings.Contains(r.Output, want) {
			return true
		}
	}
	return false
}

func forkExec(t *testing.T, env []string, id, cmd string) string {
	t.Helper()
	m := wsExec(t, env, id, "sh", "-c", cmd)
	if c, _ := m["exit_code"].(float64); c != 0 {
		t.Fatalf("exec %q in %s: %v", cmd, id, m)
	}
	return strings.TrimSpace(m["stdout"].(string))
}

// TestWorkspaceFork forks a workspace running a service and a shell two
// ways: each fork's service answers and its shell still has the variable
// set before the fork; files are the same, identity differs, writes stay
// in the fork that made them; the source runs on. A stopped source, an
// unknown one and a count out of range are refused.
func TestWorkspaceFork(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, "debian:12") // python3 for the service
	_, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", "debian:12")
	src := w.WorkspaceID
	t.Cleanup(func() { ws(t, env, nil, "delete", src) })
	forkExec(t, env, src, "echo seeded > /workspace/a.txt")
	mustWS(t, env, nil, "service", "start", src, "web", "--ready-tcp", "127.0.0.1:8000", "--",
		"python3", "-m", "http.server", "8000", "--directory", "/workspace")
	var sh struct {
		ShellID string `json:"shell_id"`
	}
	mustWS(t, env, &sh, "shell", "open", src)
	if !shellSees(t, env, src, sh.ShellID, "FOO=bar42; echo set-$FOO", "set-bar42") {
		t.Fatal("source shell did not take the variable")
	}

	var fr forkResult
	r := ws(t, env, &fr, "fork", src, "--count", "2")
	if r.code != 0 {
		t.Fatalf("fork: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	for _, f := range fr.Forks {
		id := f.WorkspaceID
		t.Cleanup(func() { ws(t, env, nil, "delete", id) })
	}
	t.Logf("fork 2 ways: %d ms, source paused %d ms", fr.DurationMS, fr.SourcePausedMS)
	if fr.SourceWorkspaceID != src || len(fr.Forks) != 2 || len(fr.NotInherited) == 0 {
		t.Fatalf("fork result %+v", fr)
	}
	srcHost := forkExec(t, env, src, "hostname; cat /etc/machine-id")
	seen := map[string]bool{srcHost: true}
	for i, f := range fr.Forks {
		if f.State != "running" || f.Start != "fork" || len(f.InheritedServices) != 1 || f.InheritedServices[0] != "web" ||
			len(f.InheritedShells) != 1 || f.InheritedShells[0] != sh.ShellID {
			t.Fatalf("fork %d: %+v", i, f)
		}
		// The service process carried over and answers, serving the same files.
		if got := forkExec(t, env, f.WorkspaceID, `python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/a.txt').read().decode())"`); got != "seeded" {
			t.Fatalf("fork %d service answered %q", i, got)
		}
		// The shell is the same process: the variable set before the fork is there.
		if !shellSees(t, env, f.WorkspaceID, sh.ShellID, "echo got-$FOO", "got-bar42") {
			t.Fatalf("fork %d shell lost its state", i)
		}
		id := forkExec(t, env, f.WorkspaceID, "hostname; cat /etc/machine-id")
		if seen[id] {
			t.Fatalf("fork %d has the identity of another guest: %q", i, id)
		}
		seen[id] = true
	}
	// Writes stay where they were made.
	forkExec(t, env, fr.Forks[0].WorkspaceID, "echo mine > /workspace/only0; echo changed > /workspace/a.txt")
	for _, id := range []string{src, fr.Forks[1].WorkspaceID} {
		if got := forkExec(t, env, id, "cat /workspace/a.txt; ls /workspace"); got != "seeded\na.txt" {
			t.Fatalf("%s sees a fork's writes: %q", id, got)
		}
	}
	// The source ran on: its service still answers.
	if got := forkExec(t, env, src, `python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/a.txt').read().decode())"`); got != "seeded" {
		t.Fatalf("source service after the fork: %q", got)
	}

	// Refusals: a count out of range, an unknown workspace, a stopped one.
	if r := ws(t, env, nil, "fork", src, "--count", "17"); r.code != 2 || !strings.Contains(r.stderr, "hint") {
		t.Fatalf("count 17: exit %d %s", r.code, r.stderr)
	}
	if r := ws(t, env, nil, "fork", "nosuchworkspace"); r.code != 3 {
		t.Fatalf("unknown workspace: exit %d %s", r.code, r.stderr)
	}
	mustWS(t, env, nil, "stop", fr.Forks[1].WorkspaceID)
	r = ws(t, env, nil, "fork", fr.Forks[1].WorkspaceID)
	var e struct {
		Error struct {
			Category string `json:"category"`
			Message  string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal([]byte(r.stdout), &e)
	if r.code != 5 || e.Error.Category != "failed_precondition" || !strings.Contains(e.Error.Message, "stopped") {
		t.Fatalf("fork of a stopped workspace: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
}
