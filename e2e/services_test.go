package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type service struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	PID      int    `json:"pid"`
	ExitCode *int   `json:"exit_code"`
	ReadyAt  string `json:"ready_at"`
}

// TestServices runs a python3 http.server behind an http probe and a tcp
// probe, a probe that never passes, logs and stop.
func TestServices(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, "debian:12")
	_, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", "debian:12")
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)

	var s service
	mustWS(t, env, &s, "service", "start", id, "web", "--ready-http", "http://127.0.0.1:8000/", "--", "python3", "-m", "http.server", "8000")
	if s.State != "running" || s.ReadyAt == "" {
		t.Fatalf("http probe: %+v", s)
	}
	mustWS(t, env, &s, "service", "start", id, "web2", "--ready-tcp", "127.0.0.1:8001", "--", "python3 -m http.server 8001")
	if s.State != "running" || s.ReadyAt == "" {
		t.Fatalf("tcp probe: %+v", s)
	}
	// The service really answers inside the guest.
	if m := wsExec(t, env, id, "python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8001/').status)"); strings.TrimSpace(m["stdout"].(string)) != "200" {
		t.Fatalf("service not answering: %v", m)
	}
	// Starting a running name is refused with a hint.
	if r := ws(t, env, nil, "service", "start", id, "web", "--", "true"); r.code != 4 || !strings.Contains(r.stderr, "hint") {
		t.Fatalf("duplicate start: %d %s", r.code, r.stderr)
	}
	var st wsStatus
	mustWS(t, env, &st, "status", id)
	if *st.ServiceCount != 2 || *st.RunningServiceCount != 2 {
		t.Fatalf("status counts: %d/%d", *st.ServiceCount, *st.RunningServiceCount)
	}

	// A probe that never passes fails within its timeout, with the probe
	// error and the last log lines, and leaves nothing running.
	start := time.Now()
	r := ws(t, env, nil, "service", "start", id, "never", "--ready-file", "/tmp/never", "--ready-timeout-seconds", "3", "--ready-interval-ms", "200", "--", "sh -c 'echo starting-up; sleep 1000'")
	if r.code != 5 || !strings.Contains(r.stderr, "/tmp/never") || !strings.Contains(r.stderr, "starting-up") {
		t.Fatalf("failing probe: %d %s", r.code, r.stderr)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("failing probe took %s", time.Since(start))
	}
	mustWS(t, env, &s, "service", "status", id, "never")
	if s.State != "failed" {
		t.Fatalf("never: %+v", s)
	}
	// The image has no ps: read /proc. The check itself must see a sleep
	// when one runs, so it is calibrated on a service that keeps running.
	countSleeps := func() string {
		m := wsExec(t, env, id, "bash", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done | grep -c '^sleep 1000 $' || true")
		return strings.TrimSpace(m["stdout"].(string))
	}
	mustWS(t, env, nil, "service", "start", id, "calibrate", "--", "sleep", "1000")
	if n := countSleeps(); n != "1" {
		t.Fatalf("the process check does not see a running sleep: %q", n)
	}
	mustWS(t, env, nil, "service", "stop", id, "calibrate")
	if m := countSleeps(); m != "0" {
		t.Fatalf("failed service left %s sleep processes", m)
	}

	// Logs tail; the http.server logged the probe's GET.
	var logs struct{ Lines []string }
	mustWS(t, env, &logs, "service", "logs", id, "web", "--tail-lines", "5")
	if len(logs.Lines) == 0 || len(logs.Lines) > 5 || !strings.Contains(strings.Join(logs.Lines, "\n"), "GET / ") {
		t.Fatalf("logs: %v", logs.Lines)
	}

	// Stop: the group gets SIGTERM; a TERM-ignoring child gets SIGKILL.
	mustWS(t, env, &s, "service", "start", id, "stubborn", "--", "sh -c \"trap '' TERM; sleep 1000\"")
	mustWS(t, env, &s, "service", "stop", id, "stubborn")
	if s.State != "stopped" {
		t.Fatalf("stop: %+v", s)
	}
	mustWS(t, env, &s, "service", "stop", id, "web")
	var list struct{ Services []service }
	mustWS(t, env, &list, "service", "list", id)
	if len(list.Services) != 5 { // web, web2, never, calibrate, stubborn
		t.Fatalf("list: %+v", list)
	}
	// Reset clears services.
	mustWS(t, env, nil, "reset", id)
	mustWS(t, env, &list, "service", "list", id)
	if len(list.Services) != 0 {
		t.Fatalf("services after reset: %+v", list)
	}
}

type shellRead struct {
	Output     string `json:"output"`
	Cursor     int64  `json:"cursor"`
	NextCursor int64  `json:"next_cursor"`
	Dropped    *struct{ From, To int64 }
}

// readUntil reads a shell from cursor until the accumulated output contains
// want, bounded in time; it returns the output and the next cursor.
func readUntil(t *testing.T, env []string, id, sid string, cursor int64, want string) (string, int64) {
	t.Helper()
	var all strings.Builder
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var r shellRead
		mustWS(t, env, &r, "shell", "read", id, sid, "--cursor", itoa(cursor))
		if r.Cursor != cursor {
			t.Fatalf("read served cursor %d, asked %d", r.Cursor, cursor)
		}
		all.WriteString(r.Output)
		cursor = r.NextCursor
		if strings.Contains(all.String(), want) {
			return all.String(), cursor
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("shell never printed %q; got %q", want, all.String())
	return "", 0
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestShells(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)

	var a, b struct {
		ShellID string `json:"shell_id"`
	}
	mustWS(t, env, &a, "shell", "open", id)
	mustWS(t, env, &b, "shell", "open", id, "--cwd", "/tmp")
	// State lives in the shell across calls; two shells are independent.
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "cd /etc; X=from-a")
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "echo pwd=$(pwd) x=$X")
	out, cur := readUntil(t, env, id, a.ShellID, 0, "pwd=/etc x=from-a")
	mustWS(t, env, nil, "shell", "write", id, b.ShellID, "--input", "echo pwd=$(pwd) x=${X:-unset}")
	if o, _ := readUntil(t, env, id, b.ShellID, 0, "pwd=/tmp x=unset"); !strings.Contains(o, "pwd=/tmp") {
		t.Fatal(o)
	}
	// Cursors continue exactly: the next read starts where the last ended.
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "seq 1 2000 | tail -n 1", "--no-newline")
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "")
	out2, cur2 := readUntil(t, env, id, a.ShellID, cur, "\n2000")
	var whole shellRead
	mustWS(t, env, &whole, "shell", "read", id, a.ShellID, "--cursor", "0", "--max-chars", "1000000")
	if !strings.HasPrefix(whole.Output, out) || !strings.Contains(whole.Output, out+out2) || whole.NextCursor < cur2 {
		t.Fatalf("cursor reads do not tile the output:\nparts %q + %q\nwhole %q", out, out2, whole.Output)
	}
	// INT interrupts the foreground job and the prompt comes back.
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "sleep 100; echo after-sleep")
	// Signal once the sleep really runs (minbase has no pgrep).
	deadline := time.Now().Add(15 * time.Second)
	for {
		m := wsExec(t, env, id, "sh -c 'grep -lx sleep /proc/[0-9]*/comm || true'")
		if strings.TrimSpace(m["stdout"].(string)) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell never started sleep")
		}
		time.Sleep(100 * time.Millisecond)
	}
	mustWS(t, env, nil, "shell", "signal", id, a.ShellID, "--signal", "INT")
	mustWS(t, env, nil, "shell", "write", id, a.ShellID, "--input", "echo interrupted-ok")
	if o, _ := readUntil(t, env, id, a.ShellID, cur2, "interrupted-ok\r\n"); strings.Contains(o, "\nafter-sleep\r\n") {
		t.Fatalf("sleep was not interrupted: %q", o)
	}
	// Close: the id is gone.
	mustWS(t, env, nil, "shell", "close", id, a.ShellID)
	if r := ws(t, env, nil, "shell", "read", id, a.ShellID); r.code != 3 || !strings.Contains(r.stderr, a.ShellID) {
		t.Fatalf("read after close: %d %s", r.code, r.stderr)
	}
	// Reset closes all shells.
	mustWS(t, env, nil, "reset", id)
	if r := ws(t, env, nil, "shell", "read", id, b.ShellID); r.code != 3 {
		t.Fatalf("shell survived reset: %d %s", r.code, r.stderr)
	}
}

// TestShellReaderFallsBehind: with a small buffer, a reader that falls
// behind is told exactly which bytes were dropped, then continues.
func TestShellReaderFallsBehind(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	defer ws(t, env, nil, "delete", w.WorkspaceID)
	var sh struct {
		ShellID string `json:"shell_id"`
	}
	mustWS(t, env, &sh, "shell", "open", w.WorkspaceID, "--buffer-bytes", "4096")
	mustWS(t, env, nil, "shell", "write", w.WorkspaceID, sh.ShellID, "--input", "seq 1 20000 | tail -c 30000; echo end-of-burst")
	// Wait until the burst has pushed the start out of the buffer, so a
	// reader at cursor 0 is behind.
	var first shellRead
	for deadline := time.Now().Add(20 * time.Second); ; {
		mustWS(t, env, &first, "shell", "read", w.WorkspaceID, sh.ShellID, "--cursor", "0")
		if (first.Dropped != nil && strings.Contains(first.Output, "end-of-burst")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if first.Dropped == nil || first.Dropped.From != 0 || first.Dropped.To <= 0 || first.Cursor != first.Dropped.To {
		t.Fatalf("read behind the buffer: dropped %+v, served from %d", first.Dropped, first.Cursor)
	}
	if n := first.NextCursor - first.Cursor; n > 4096+4096/4 { // the buffer trims with 25% slack
		t.Fatalf("served %d bytes from a 4096-byte buffer", n)
	}
	// From there on the reader continues without gaps.
	if !strings.Contains(first.Output, "end-of-burst") {
		readUntil(t, env, w.WorkspaceID, sh.ShellID, first.NextCursor, "end-of-burst")
	}
	// The buffer keeps the newest output: the burst's last line is there.
	if !strings.Contains(first.Output, "20000\r\n") && !strings.Contains(first.Output, "end-of-burst") {
		t.Fatalf("the kept tail is not the newest output: %q", first.Output)
	}
}
