package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// TestMain lets the test binary be a supervisor process (the go-sdk
// cmd_test.go trick): Spawn re-executes it with the supervisor's argument.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == Arg {
		os.Exit(MainWith(os.Args[2], Options{Steps: fakevmm.Steps(fakevmm.New(vmm.Features{}))}))
	}
	os.Exit(m.Run())
}

// newInstance makes a VM directory under a fresh state root with a record.
func newInstance(t *testing.T, rec instance.Record) vmdir.Dir {
	t.Helper()
	root := t.TempDir()
	if rec.ID == "" {
		rec.ID = vmdir.NewID()
	}
	if rec.Kind == "" {
		rec.Kind = instance.KindVM
	}
	rec.Environment, rec.VCPUCount, rec.MemMiB = "debian:12", 1, 256
	rec.CreatedAt = time.Now().UTC()
	dir, err := vmdir.Open(filepath.Join(root, "vms"), rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Create(); err != nil {
		t.Fatal(err)
	}
	if err := instance.Save(dir, rec); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serve runs a supervisor for dir in this process and returns a stop
// signal channel and Serve's result.
func serve(t *testing.T, dir vmdir.Dir, opts Options) (chan os.Signal, <-chan error) {
	t.Helper()
	if opts.Steps == nil {
		opts.Steps = fakevmm.Steps(fakevmm.New(vmm.Features{}))
	}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- Serve(dir, slog.New(slog.DiscardHandler), opts, sigs)
		close(finished)
	}()
	t.Cleanup(func() {
		select {
		case sigs <- syscall.SIGTERM:
		default:
		}
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("supervisor did not end")
		}
	})
	return sigs, done
}

// waitState polls the supervisor's status until it reports want.
func waitState(t *testing.T, dir vmdir.Dir, want string) Status {
	t.Helper()
	ctx := context.Background()
	rec, _ := instance.Load(dir, "vm")
	deadline := time.Now().Add(10 * time.Second)
	var st Status
	for time.Now().Before(deadline) {
		st = Observe(ctx, dir, rec)
		if st.State == want {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("state %q never came; last %+v", want, st)
	return st
}

func waitDone(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor did not end")
	}
}

func TestServeRunsAndStops(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	_, done := serve(t, dir, Options{})
	st := waitState(t, dir, instance.Running)
	if st.Backend != fakevmm.Name || st.Health == nil || st.SupervisorPID != os.Getpid() || st.Isolation != "vm" {
		t.Fatalf("running status: %+v", st)
	}
	// The agent API is proxied: a real command runs through it.
	agent := NewClient(dir).Agent()
	defer agent.Close()
	res, err := agent.Exec(context.Background(), agentapi.ExecRequest{Shell: "echo hello; echo oops >&2; exit 3", TimeoutMS: 10000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || res.Stdout != "hello\n" || res.Stderr != "oops\n" {
		t.Fatalf("exec result: %+v", res)
	}
	if err := NewClient(dir).Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done)
	n, ok := instance.ReadExit(dir)
	if !ok || n.State != instance.Stopped || n.Cause != instance.CauseRequested {
		t.Fatalf("exit note: %+v %v", n, ok)
	}
	rec, _ := instance.Load(dir, "vm")
	if st := Observe(context.Background(), dir, rec); st.State != instance.Stopped || st.Cause != instance.CauseRequested {
		t.Fatalf("observed after stop: %+v", st)
	}
	// The agent proxy refuses once the guest is gone.
	if _, err := agent.Health(context.Background()); err == nil {
		t.Fatal("health answered after stop")
	}
	events, _ := os.ReadFile(dir.Path(vmdir.Events))
	for _, e := range []string{`"starting"`, `"running"`, `"stopped"`} {
		if !strings.Contains(string(events), e) {
			t.Errorf("event log lacks %s:\n%s", e, events)
		}
	}
}

// A guest whose agent stops answering is observed as unresponsive, with
// a typed cause, and as running again once it answers.
func TestUnresponsiveGuest(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	serve(t, dir, Options{HealthDeadline: 200 * time.Millisecond})
	waitState(t, dir, instance.Running)
	if err := fakevmm.Freeze(dir); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, dir, instance.Unresponsive)
	if st.Cause != instance.CauseAgentSilent || !strings.Contains(st.Reason, "health") {
		t.Fatalf("unresponsive status: %+v", st)
	}
	if err := fakevmm.Thaw(dir); err != nil {
		t.Fatal(err)
	}
	waitState(t, dir, instance.Running)
}

// A status request held until the boot's end is answered with what the
// boot observed (the agent's answer that ended it), without a second health
// round trip: here the agent stops answering right after that answer, and
// the woken request still says running, with the boot's health. A request
// that comes after the boot asks the guest, and finds it silent.
func TestStatusWokenByBoot(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	held := make(chan struct{})
	var once sync.Once
	steps := append(fakevmm.Steps(fakevmm.New(vmm.Features{})), vm.Step{Name: "silence the agent", Run: func(context.Context, vm.Deps, vm.Config, *vm.VM) error {
		if err := fakevmm.Freeze(dir); err != nil {
			return err
		}
		<-held // a status request waits for this boot's end
		return nil
	}})
	serve(t, dir, Options{Steps: steps, HealthDeadline: 200 * time.Millisecond, statusHeld: func() { once.Do(func() { close(held) }) }})
	defer fakevmm.Thaw(dir) // the stop at cleanup asks the agent to power off
	waitState(t, dir, instance.Starting)
	rec, _ := instance.Load(dir, "vm")
	st := ObserveWait(context.Background(), dir, rec, 10*time.Second)
	if st.State != instance.Running || st.Health == nil {
		t.Fatalf("status woken by the boot: %+v", st)
	}
	if st := Observe(context.Background(), dir, rec); st.State != instance.Unresponsive || st.Cause != instance.CauseAgentSilent {
		t.Fatalf("status after the boot, agent silent: %+v", st)
	}
}

// A VMM that dies under a running guest is broken at once (observed), then
// in the exit note.
func TestVMMCrash(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	_, done := serve(t, dir, Options{})
	waitState(t, dir, instance.Running)
	if err := fakevmm.Crash(dir); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done)
	n, _ := instance.ReadExit(dir)
	if n.State != instance.Broken || n.Cause != instance.CauseVMMExited || !strings.Contains(n.Reason, "crashed") {
		t.Fatalf("exit note: %+v", n)
	}
}

func TestTTLExpires(t *testing.T) {
	exp := time.Now().Add(300 * time.Millisecond)
	dir := newInstance(t, instance.Record{TTLSeconds: 1, ExpiresAt: &exp})
	_, done := serve(t, dir, Options{})
	waitDone(t, done)
	n, _ := instance.ReadExit(dir)
	if n.State != instance.Expired || n.Cause != instance.CauseTTL {
		t.Fatalf("exit note: %+v", n)
	}
}

func TestSignalStops(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	sigs, done := serve(t, dir, Options{})
	waitState(t, dir, instance.Running)
	sigs <- syscall.SIGHUP
	waitDone(t, done)
	n, _ := instance.ReadExit(dir)
	if n.State != instance.Stopped || n.Cause != instance.CauseSignal {
		t.Fatalf("exit note: %+v", n)
	}
}

func TestBootFailure(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	if err := os.WriteFile(dir.Path(fakevmm.FailFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, done := serve(t, dir, Options{})
	waitDone(t, done)
	n, _ := instance.ReadExit(dir)
	if n.State != instance.Broken || n.Cause != instance.CauseBootFailed || !strings.Contains(n.Reason, "refused") {
		t.Fatalf("exit note: %+v", n)
	}
}

// A stop requested while the guest boots ends the boot with the stop's
// own state.
func TestStopDuringBoot(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	if err := os.WriteFile(dir.Path(fakevmm.NoAgent), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sigs, done := serve(t, dir, Options{})
	waitState(t, dir, instance.Starting)
	// The agent proxy refuses while booting.
	agent := NewClient(dir).Agent()
	_, err := agent.Health(context.Background())
	agent.Close()
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("health while booting: %v", err)
	}
	sigs <- syscall.SIGTERM
	waitDone(t, done)
	n, _ := instance.ReadExit(dir)
	if n.State != instance.Stopped || n.Cause != instance.CauseSignal {
		t.Fatalf("exit note: %+v", n)
	}
}

// Spawn starts a detached supervisor process (this test binary); Kill
// ends it and WaitExit sees it gone; Observe then says broken.
func TestSpawnKill(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := Spawn(self, dir); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, dir, instance.Running)
	if st.SupervisorPID == os.Getpid() {
		t.Fatal("supervisor runs in the test process")
	}
	Kill(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitExit(ctx, dir); err != nil {
		t.Fatal(err)
	}
	rec, _ := instance.Load(dir, "vm")
	if st := Observe(context.Background(), dir, rec); st.State != instance.Broken || st.Cause != instance.CauseSupervisorGone {
		t.Fatalf("after kill: %+v", st)
	}
	if err := Spawn("/nonexistent/pyro", dir); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("spawn of a missing binary: %v", err)
	}
}

// A supervisor process stops gracefully on request.
func TestSpawnStop(t *testing.T) {
	dir := newInstance(t, instance.Record{})
	self, _ := os.Executable()
	if err := Spawn(self, dir); err != nil {
		t.Fatal(err)
	}
	waitState(t, dir, instance.Running)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := NewClient(dir).Stop(ctx); err != nil {
		t.Fatal(err)
	}
	rec, _ := instance.Load(dir, "vm")
	if st := Observe(ctx, dir, rec); st.State != instance.Stopped {
		t.Fatalf("after stop: %+v", st)
	}
	log, _ := os.ReadFile(dir.Path(vmdir.SupervisorLog))
	if !strings.Contains(string(log), "supervisor exiting") {
		t.Errorf("supervisor log:\n%s", log)
	}
}

// MainWith fails cleanly on a directory without a record.
func TestMainWithoutRecord(t *testing.T) {
	dir := t.TempDir()
	if code := MainWith(dir, Options{}); code != 1 {
		t.Fatalf("exit code %d", code)
	}
	if code := MainWith(filepath.Join(dir, "missing", "x"), Options{}); code != 1 {
		t.Fatalf("exit code %d", code)
	}
}
