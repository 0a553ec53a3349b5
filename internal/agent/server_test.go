package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// newTestClient serves the agent API over in-memory pipes and returns a
// real client for it.
func newTestClient(t *testing.T, opts Options) *agentapi.Client {
	t.Helper()
	return serveTestAgent(t, New(opts))
}

// serveTestAgent is newTestClient for an agent the test has set up.
func serveTestAgent(t *testing.T, a *Agent) *agentapi.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	c := agentapi.NewClient(func(context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = a.Serve(ctx, guest)
		}()
		return host, nil
	})
	t.Cleanup(func() {
		c.Close()
		cancel()
		wg.Wait()
	})
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHealth(t *testing.T) {
	c := newTestClient(t, Options{Version: "test-1", AgentStartedMS: 7})
	h, err := c.WaitReady(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if h.AgentVersion != "test-1" || h.VCPUs < 1 || h.MemTotalKiB <= 0 || h.KernelRelease == "" || h.UptimeMS <= 0 || h.AgentStartedMS != 7 {
		t.Fatalf("unexpected health %+v", h)
	}
}

func TestExecArgvAndShell(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"echo", "hello", "world"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != "hello world\n" || res.Stderr != "" {
		t.Fatalf("argv: %+v", res)
	}
	if res.PID == 0 || res.StartedAt.IsZero() || res.FinishedAt.Before(res.StartedAt) {
		t.Fatalf("argv: missing metadata %+v", res)
	}
	res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: "echo out; echo err >&2; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" || res.TimedOut || res.Signal != "" {
		t.Fatalf("shell: %+v", res)
	}
}

func TestExecStreamsOutput(t *testing.T) {
	c := newTestClient(t, Options{})
	var mu sync.Mutex
	got := map[string]string{}
	var firstAt time.Time
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "echo a; sleep 0.3; echo b >&2; echo c"}, func(stream string, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		if firstAt.IsZero() {
			firstAt = time.Now()
		}
		got[stream] += string(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["stdout"] != "a\nc\n" || got["stderr"] != "b\n" {
		t.Fatalf("streamed %q", got)
	}
	if res.Stdout != "a\nc\n" || res.Stderr != "b\n" {
		t.Fatalf("result %+v", res)
	}
	if time.Since(firstAt) < 200*time.Millisecond {
		t.Fatalf("first chunk arrived only at the end: output is not streamed")
	}
}

func TestExecEnvAndCwd(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{
		Shell: `echo "$FOO|$HOME|$LANG|$(pwd)"`,
		Env:   map[string]string{"FOO": "bar", "HOME": "/home/x"},
		Cwd:   dir,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "bar|/home/x|C.UTF-8|" + dir + "\n"
	if res.Stdout != want {
		t.Fatalf("got %q, want %q", res.Stdout, want)
	}
	res, err = c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"pwd"}}, nil)
	if err != nil || res.Stdout != "/\n" {
		t.Fatalf("default cwd: %+v %v", res, err)
	}
}

func TestExecNotFound(t *testing.T) {
	c := newTestClient(t, Options{})
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"pyro-no-such-command"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 127 || !strings.Contains(res.Stderr, "pyro-no-such-command: command not found") {
		t.Fatalf("got %+v", res)
	}
	res, err = c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"/nonexistent/bin"}}, nil)
	if err != nil || res.ExitCode != 127 {
		t.Fatalf("absolute path: %+v %v", res, err)
	}
	dir := t.TempDir()
	noexec := filepath.Join(dir, "script")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err = c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{noexec}}, nil)
	if err != nil || res.ExitCode != 126 {
		t.Fatalf("not executable: %+v %v", res, err)
	}
}

func TestExecBadRequest(t *testing.T) {
	c := newTestClient(t, Options{})
	for name, req := range map[string]agentapi.ExecRequest{
		"empty":       {},
		"both":        {Argv: []string{"true"}, Shell: "true"},
		"relative":    {Argv: []string{"true"}, Cwd: "tmp"},
		"missing cwd": {Argv: []string{"true"}, Cwd: "/nonexistent-dir"},
		"bad env":     {Argv: []string{"true"}, Env: map[string]string{"A=B": "c"}},
		"negative":    {Argv: []string{"true"}, TimeoutMS: -1},
	} {
		_, err := c.Exec(testCtx(t), req, nil)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want invalid argument", name, err)
		}
	}
}

func TestExecTruncation(t *testing.T) {
	c := newTestClient(t, Options{})
	var streamed atomic.Int64
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{
		Shell:          "head -c 100000 /dev/zero; echo end; echo short >&2",
		MaxOutputBytes: 1000,
	}, func(stream string, p []byte) {
		if stream == agentapi.EventStdout {
			streamed.Add(int64(len(p)))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// 500 bytes of head, the marker, 500 bytes of tail ending in "end".
	marker := "\n" + agentapi.ElisionMarker(100004-1000) + "\n"
	if res.ExitCode != 0 || len(res.Stdout) != 1000+len(marker) || res.Stdout[500:500+len(marker)] != marker || !strings.HasSuffix(res.Stdout, "\x00end\n") ||
		!res.StdoutTruncated || res.StderrTruncated || res.Stderr != "short\n" {
		t.Fatalf("got exit=%d len=%d trunc=%v/%v stderr=%q", res.ExitCode, len(res.Stdout), res.StdoutTruncated, res.StderrTruncated, res.Stderr)
	}
	// Live: the first 1000 bytes, then the marker and the tail.
	if streamed.Load() != int64(1000+len(marker)+500) {
		t.Fatalf("streamed %d bytes, want %d", streamed.Load(), 1000+len(marker)+500)
	}
}

// waitGone waits until pid no longer runs (gone or zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		// state is the field after the ")" of the command name.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && strings.HasPrefix(string(b[i:]), ") Z") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	t.Fatalf("process %d still runs", pid)
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err == nil {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no pid in %s", path)
	return 0
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	c := newTestClient(t, Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{
		Shell:     "sleep 100 & echo $! > " + pidFile + "; sleep 100",
		TimeoutMS: 300,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("took %v", el)
	}
	if !res.TimedOut || res.ExitCode != 124 || res.Signal != "SIGKILL" {
		t.Fatalf("got %+v", res)
	}
	waitGone(t, readPID(t, pidFile))
}

func TestExecCancelKillsProcess(t *testing.T) {
	c := newTestClient(t, Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		res, err := c.Exec(ctx, agentapi.ExecRequest{Shell: "echo $$ > " + pidFile + "; exec sleep 100"}, nil)
		t.Logf("res %+v", res)
		errc <- err
	}()
	pid := readPID(t, pidFile)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	waitGone(t, pid)
	// The session survives a cancelled request.
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"true"}}, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("after cancel: %+v %v", res, err)
	}
}

func TestExecBackgroundHoldsPipe(t *testing.T) {
	c := newTestClient(t, Options{})
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "sleep 30 & echo $! > " + pidFile + "; echo done"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != "done\n" {
		t.Fatalf("got %+v", res)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("exec waited for a background process: %v", el)
	}
	_ = unix.Kill(readPID(t, pidFile), unix.SIGKILL)
}

func TestExecSignal(t *testing.T) {
	c := newTestClient(t, Options{})
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "kill -TERM $$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 128+15 || res.Signal != "SIGTERM" {
		t.Fatalf("got %+v", res)
	}
}

func TestConcurrentExec(t *testing.T) {
	c := newTestClient(t, Options{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"echo", strconv.Itoa(i)}}, nil)
			if err != nil || res.Stdout != strconv.Itoa(i)+"\n" {
				t.Errorf("%d: %+v %v", i, res, err)
			}
		}()
	}
	wg.Wait()
}

func TestShutdown(t *testing.T) {
	called := make(chan struct{}, 1)
	c := newTestClient(t, Options{Shutdown: func() { called <- struct{}{} }})
	if err := c.Shutdown(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown hook not called")
	}
	c2 := newTestClient(t, Options{})
	if err := c2.Shutdown(testCtx(t)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("without hook: got %v", err)
	}
}

func TestUnavailable(t *testing.T) {
	c := agentapi.NewClient(func(context.Context) (net.Conn, error) {
		return nil, errors.New("connection refused")
	})
	defer c.Close()
	if _, err := c.Health(testCtx(t)); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.WaitReady(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("WaitReady: got %v", err)
	}
}

func TestServerGoneMidExec(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := New(Options{})
	c := agentapi.NewClient(func(context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		go func() { _ = a.Serve(ctx, guest) }()
		return host, nil
	})
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "sleep 100"}, nil)
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("got %v, want unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exec did not fail when the agent went away")
	}
}

func TestParseCmdline(t *testing.T) {
	c := parseCmdline("console=ttyS0 pyro.net=1 quiet pyro.hostname=box pyro.poweroff=0\n")
	if !c.net || c.poweroff || c.hostname != "box" {
		t.Fatalf("got %+v", c)
	}
	c = parseCmdline("pyro.poweroff=1")
	if c.net || !c.poweroff || c.hostname != "pyro" {
		t.Fatalf("got %+v", c)
	}
	// A name that is no DNS label is not taken.
	if c = parseCmdline("pyro.hostname=a_b"); c.hostname != "pyro" {
		t.Fatalf("got %+v", c)
	}
}

func TestRtentryLayout(t *testing.T) {
	// struct rtentry on LP64 Linux is 120 bytes; rt_dev sits at offset 88.
	var rt rtentry
	if s := unsafe.Sizeof(rt); s != 120 {
		t.Fatalf("sizeof(rtentry) = %d, want 120", s)
	}
	if o := unsafe.Offsetof(rt.flags); o != 56 {
		t.Fatalf("offsetof(rt_flags) = %d, want 56", o)
	}
	if o := unsafe.Offsetof(rt.dev); o != 88 {
		t.Fatalf("offsetof(rt_dev) = %d, want 88", o)
	}
}

// One Agent serves host connection after host connection from a listener,
// and what a connection set (here a secret) is still there for the next:
// state lives in the Agent, not in a connection or a package variable.
func TestServeListenerKeepsStateAcrossConnections(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	a := New(Options{SecretsDir: t.TempDir()})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.ServeListener(ctx, NetListener(ln)) }()
	dial := func() *agentapi.Client {
		return agentapi.NewClient(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		})
	}
	c1 := dial()
	if _, err := c1.SetSecrets(testCtx(t), map[string]string{"TOKEN": "listener-secret-1"}); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	c2 := dial()
	defer c2.Close()
	res, err := c2.Exec(testCtx(t), agentapi.ExecRequest{Shell: `echo "$TOKEN"`, SecretEnv: map[string]string{"TOKEN": ""}}, nil)
	if err != nil || res.Stdout != "[REDACTED]\n" {
		t.Fatalf("second connection: %+v %v", res, err)
	}
	// A second agent has its own, empty, secret set.
	c3 := newTestClient(t, Options{})
	if _, err := c3.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"true"}, SecretEnv: map[string]string{"TOKEN": ""}}, nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("another agent sees the secret: %v", err)
	}
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeListener: %v", err)
	}
}
