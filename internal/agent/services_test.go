package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stopAfter stops the service when the test ends.
func stopAfter(t *testing.T, c *agentapi.Client, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, _ = c.StopService(ctx, name)
	})
}

func needPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
}

func checkStopped(t *testing.T, c *agentapi.Client, name string) {
	t.Helper()
	st, err := c.StopService(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceStopped || st.ExitCode == nil || st.StoppedAt == nil {
		t.Fatalf("after stop: %+v", st)
	}
	waitGone(t, st.PID)
	// Idempotent.
	st2, err := c.StopService(testCtx(t), name)
	if err != nil || st2.State != agentapi.ServiceStopped {
		t.Fatalf("second stop: %+v %v", st2, err)
	}
}

func TestServiceHTTPProbe(t *testing.T) {
	needPython(t)
	c := newTestClient(t, Options{})
	port := freePort(t)
	stopAfter(t, c, "web")
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "web",
		Argv:            []string{"python3", "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1"},
		Cwd:             t.TempDir(),
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeHTTP, URL: fmt.Sprintf("http://127.0.0.1:%d/", port)},
		ReadyTimeoutMS:  20_000,
		ReadyIntervalMS: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceRunning || st.ReadyAt == nil || st.PID == 0 || !st.Active() || st.RestartCount != 0 {
		t.Fatalf("status %+v", st)
	}
	list, err := c.ListServices(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range list {
		found = found || (s.Name == "web" && s.State == agentapi.ServiceRunning)
	}
	if !found {
		t.Fatalf("list %+v", list)
	}
	// The probe's GET is logged by http.server.
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs, err := c.ServiceLogs(testCtx(t), "web", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(logs.Lines, "\n"), `"GET / HTTP/1.1" 200`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs %+v", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkStopped(t, c, "web")
}

func TestServiceTCPProbe(t *testing.T) {
	needPython(t)
	c := newTestClient(t, Options{})
	port := freePort(t)
	stopAfter(t, c, "web-tcp")
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "web-tcp",
		Shell:           fmt.Sprintf("exec python3 -m http.server %d --bind 127.0.0.1", port),
		Cwd:             t.TempDir(),
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeTCP, Address: fmt.Sprint(port)},
		ReadyTimeoutMS:  20_000,
		ReadyIntervalMS: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceRunning || st.Readiness.Address != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Fatalf("status %+v", st)
	}
	if conn, err := net.Dial("tcp", st.Readiness.Address); err != nil {
		t.Fatalf("service not listening: %v", err)
	} else {
		conn.Close()
	}
	checkStopped(t, c, "web-tcp")
}

func TestServiceFileAndCommandProbes(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	stopAfter(t, c, "filey")
	stopAfter(t, c, "cmdy")
	t0 := time.Now()
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "filey",
		Shell:           "sleep 0.3; touch ready; exec sleep 100",
		Cwd:             dir,
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeFile, Path: "ready"},
		ReadyIntervalMS: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceRunning || time.Since(t0) < 300*time.Millisecond {
		t.Fatalf("file probe: %+v after %s", st, time.Since(t0))
	}
	if _, err := os.Stat(filepath.Join(dir, "ready")); err != nil {
		t.Fatal(err)
	}
	st, err = c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "cmdy",
		Shell:           "sleep 0.2; echo up > state; exec sleep 100",
		Cwd:             dir,
		Env:             map[string]string{"WANT": "up"},
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeCommand, Command: `test "$(cat state)" = "$WANT"`},
		ReadyIntervalMS: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceRunning || st.LastProbeError != "" {
		t.Fatalf("command probe: %+v", st)
	}
	checkStopped(t, c, "filey")
	checkStopped(t, c, "cmdy")
}

func TestServiceNoReadiness(t *testing.T) {
	c := newTestClient(t, Options{})
	stopAfter(t, c, "plain")
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "plain", Argv: []string{"sleep", "100"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceRunning || st.ReadyAt != nil {
		t.Fatalf("status %+v", st)
	}
	// A service that ends on its own.
	st, err = c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "oneshot", Shell: "echo done; exit 4", Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st.Active() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		if st, err = c.ServiceStatus(testCtx(t), "oneshot"); err != nil {
			t.Fatal(err)
		}
	}
	if st.State != agentapi.ServiceFailed || st.ExitCode == nil || *st.ExitCode != 4 {
		t.Fatalf("oneshot %+v", st)
	}
	// Stopping an ended service is fine and keeps its state.
	if st, err = c.StopService(testCtx(t), "oneshot"); err != nil || st.State != agentapi.ServiceFailed {
		t.Fatalf("stop ended: %+v %v", st, err)
	}
	checkStopped(t, c, "plain")
}

func TestServiceProbeTimeout(t *testing.T) {
	c := newTestClient(t, Options{})
	port := freePort(t)
	stopAfter(t, c, "never")
	t0 := time.Now()
	_, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "never",
		Shell:           "echo starting up; echo second line >&2; exec sleep 100",
		Cwd:             "/",
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeTCP, Address: fmt.Sprintf("127.0.0.1:%d", port)},
		ReadyTimeoutMS:  1000,
		ReadyIntervalMS: 50,
	})
	took := time.Since(t0)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("want failed_precondition, got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"did not become ready within 1s", "starting up", "second line"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	// The last probe's own error: refused, or on a loaded host its dial
	// cut short by the readiness deadline.
	if !strings.Contains(msg, "connection refused") && !strings.Contains(msg, "i/o timeout") {
		t.Errorf("error %q does not say why the probe failed", msg)
	}
	st, err := c.ServiceStatus(testCtx(t), "never")
	if took < time.Second || took > 30*time.Second { // 1s + up to 1s TERM grace; the upper bound only catches a wait that ignores the timeout
		t.Errorf("failed after %s, want about 1s: %v; %+v", took, msg, st)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.ServiceFailed || st.Error == "" || st.LastProbeError == "" || st.PID == 0 {
		t.Fatalf("status %+v", st)
	}
	waitGone(t, st.PID)
	if groupAlive(st.PID) {
		t.Fatal("process group still alive")
	}
}

func TestServiceExitsBeforeReady(t *testing.T) {
	c := newTestClient(t, Options{})
	_, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:           "crash",
		Shell:          "echo boom >&2; exit 3",
		Cwd:            "/",
		Readiness:      &agentapi.ServiceReadiness{Type: agentapi.ProbeFile, Path: "/nonexistent/ready"},
		ReadyTimeoutMS: 10_000,
	})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "exited with code 3") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v", err)
	}
	st, err := c.ServiceStatus(testCtx(t), "crash")
	if err != nil || st.State != agentapi.ServiceFailed || *st.ExitCode != 3 {
		t.Fatalf("status %+v %v", st, err)
	}
}

func TestServiceLogsTail(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	stopAfter(t, c, "chatty")
	_, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "chatty",
		Shell:           "i=1; while [ $i -le 300 ]; do echo line$i; i=$((i+1)); done; printf partial; touch ready; exec sleep 100",
		Cwd:             dir,
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeFile, Path: "ready"},
		ReadyIntervalMS: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.ServiceLogs(testCtx(t), "chatty", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs.Lines) != 200 || logs.Lines[0] != "line102" || logs.Lines[199] != "partial" || logs.Truncated || logs.Name != "chatty" || logs.State != agentapi.ServiceRunning {
		t.Fatalf("default tail: %d lines, first %q last %q, %+v", len(logs.Lines), logs.Lines[0], logs.Lines[len(logs.Lines)-1], logs.Truncated)
	}
	logs, err = c.ServiceLogs(testCtx(t), "chatty", 3, false)
	if err != nil || strings.Join(logs.Lines, ",") != "line299,line300,partial" {
		t.Fatalf("tail 3: %+v %v", logs, err)
	}
	logs, err = c.ServiceLogs(testCtx(t), "chatty", 3, true)
	if err != nil || len(logs.Lines) != 301 || logs.Lines[0] != "line1" {
		t.Fatalf("all: %d %v", len(logs.Lines), err)
	}
}

func TestServiceStopKillsGroup(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	stopAfter(t, c, "stubborn")
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{
		Name:            "stubborn",
		Shell:           `trap "" TERM; sleep 1000 & echo $! > child.pid; touch ready; wait`,
		Cwd:             dir,
		Readiness:       &agentapi.ServiceReadiness{Type: agentapi.ProbeFile, Path: "ready"},
		ReadyIntervalMS: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	child := readPID(t, filepath.Join(dir, "child.pid"))
	t0 := time.Now()
	st, err = c.StopService(testCtx(t), "stubborn")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if st.State != agentapi.ServiceStopped || st.Signal != "SIGKILL" || took < 4*time.Second || took > 12*time.Second {
		t.Fatalf("stop after %s: %+v", took, st)
	}
	waitGone(t, st.PID)
	waitGone(t, child)
}

func TestServiceNamesAndDuplicates(t *testing.T) {
	c := newTestClient(t, Options{})
	for _, name := range []string{"", "-x", ".hidden", "has space", "a/b", strings.Repeat("a", 65)} {
		_, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: name, Argv: []string{"true"}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("name %q: want invalid_argument, got %v", name, err)
		}
	}
	for _, bad := range []agentapi.ServiceStartRequest{
		{Name: "ok"},
		{Name: "ok", Argv: []string{"true"}, Readiness: &agentapi.ServiceReadiness{Type: "bogus"}},
		{Name: "ok", Argv: []string{"true"}, Readiness: &agentapi.ServiceReadiness{Type: "http", URL: "ftp://x"}},
		{Name: "ok", Argv: []string{"true"}, Readiness: &agentapi.ServiceReadiness{Type: "tcp"}},
		{Name: "ok", Argv: []string{"true"}, Cwd: "/nonexistent-dir"},
	} {
		if _, err := c.StartService(testCtx(t), bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: want invalid_argument, got %v", bad, err)
		}
	}
	if _, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "ok", Argv: []string{"pyro-no-such-cmd"}}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("missing command: %v", err)
	}
	name := "Dup_1.x-" + strings.Repeat("y", 56) // 64 chars
	stopAfter(t, c, name)
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: name, Argv: []string{"sleep", "100"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: name, Argv: []string{"sleep", "100"}, Cwd: "/"})
	if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), "stop it first or pick another name") {
		t.Fatalf("duplicate: %v", err)
	}
	checkStopped(t, c, name)
	st2, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: name, Argv: []string{"sleep", "100"}, Cwd: "/"})
	if err != nil || st2.PID == st.PID || st2.State != agentapi.ServiceRunning {
		t.Fatalf("restart after stop: %+v %v", st2, err)
	}
	for _, f := range []func() error{
		func() error { _, err := c.ServiceStatus(testCtx(t), "nope"); return err },
		func() error { _, err := c.ServiceLogs(testCtx(t), "nope", 0, false); return err },
		func() error { _, err := c.StopService(testCtx(t), "nope"); return err },
	} {
		if err := f(); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("unknown service: %v", err)
		}
	}
}

func TestServiceReset(t *testing.T) {
	c := newTestClient(t, Options{})
	var pids []int
	for _, name := range []string{"r1", "r2"} {
		stopAfter(t, c, name)
		st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: name, Argv: []string{"sleep", "100"}, Cwd: "/"})
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, st.PID)
	}
	res, err := c.ResetServices(testCtx(t))
	if err != nil || res.Stopped < 2 || res.Removed < 2 {
		t.Fatalf("reset %+v %v", res, err)
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
	list, err := c.ListServices(testCtx(t))
	if err != nil || len(list) != 0 {
		t.Fatalf("after reset: %+v %v", list, err)
	}
}
