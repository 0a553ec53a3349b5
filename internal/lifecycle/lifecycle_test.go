package lifecycle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// TestMain lets this test binary be the supervisor process that the
// manager spawns (go-sdk's cmd_test.go trick), booting fake guests that
// serve the real agent in memory.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == supervisor.Arg {
		os.Exit(supervisor.MainWith(os.Args[2], supervisor.Options{
			Steps:          fakevmm.Steps(fakevmm.New(vmm.Features{})),
			HealthDeadline: 300 * time.Millisecond,
			// Pooled workspaces (pooled_test.go): the fake backend
			// cannot pause, and its agent runs on the host.
			Pause:    func(context.Context, *vm.VM) (supervisor.PausedGuest, error) { return noPause{}, nil },
			Identity: func(context.Context, *vm.VM) error { return nil },
		}))
	}
	os.Exit(m.Run())
}

type fixture struct {
	m        *Manager
	dirs     statedir.Dirs
	prepared atomic.Int32
	failPrep atomic.Bool
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dirs: statedir.Dirs{Root: t.TempDir()}}
	f.m = New(Config{
		Dirs:   f.dirs,
		Binary: func() (string, error) { return self, nil },
		CheckEnvironment: func(name string) error {
			if name == "missing:1" {
				return errdefs.New(errdefs.ErrNotFound, "", "environment %q not installed", name)
			}
			return nil
		},
		PrepareGuest: func(ctx context.Context, dir vmdir.Dir, rec instance.Record, a *agentapi.Client) error {
			f.prepared.Add(1)
			if f.failPrep.Load() {
				return errors.New("prepare failed")
			}
			_, err := a.Health(ctx)
			return err
		},
		BootTimeout:     20 * time.Second,
		RecoverDeadline: 300 * time.Millisecond,
	})
	return f
}

func newRecord(kind string) instance.Record {
	return instance.Record{ID: vmdir.NewID(), Kind: kind, Environment: "debian:12", VCPUCount: 1, MemMiB: 256, CreatedAt: time.Now().UTC()}
}

// create records an instance (a workspace gets a one-line "disk").
func (f *fixture) create(t *testing.T, rec instance.Record) (vmdir.Dir, instance.Record) {
	t.Helper()
	dir, rec, err := f.m.Create(context.Background(), rec, func(dir vmdir.Dir, r *instance.Record) error {
		if r.Kind != instance.KindWorkspace {
			return nil
		}
		r.WorkspaceDisk = dir.Path("disk.img")
		return os.WriteFile(r.WorkspaceDisk, []byte("generation 0"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		supervisor.Kill(dir)
		_ = supervisor.WaitExit(ctx, dir)
	})
	return dir, rec
}

func exec(t *testing.T, a *agentapi.Client, shell string) agentapi.ExecResult {
	t.Helper()
	defer a.Close()
	res, err := a.Exec(context.Background(), agentapi.ExecRequest{Shell: shell, TimeoutMS: 10000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestStartStopDelete(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir, rec := f.create(t, newRecord(instance.KindVM))
	if st := f.m.Observe(ctx, dir, rec); st.State != instance.Created {
		t.Fatalf("fresh: %+v", st)
	}
	if _, err := f.m.Agent(ctx, dir, rec); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "vm start") {
		t.Fatalf("agent of a created vm: %v", err)
	}
	st, err := f.m.Start(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != instance.Running || st.Backend != fakevmm.Name {
		t.Fatalf("started: %+v", st)
	}
	// Idempotent: a second start returns the running status, no new boot.
	if _, err := f.m.Start(ctx, dir, rec); err != nil {
		t.Fatal(err)
	}
	if boots, _ := fakevmm.Boots(dir); len(boots) != 1 || f.prepared.Load() != 1 {
		t.Fatalf("boots %d, prepared %d", len(boots), f.prepared.Load())
	}
	a, err := f.m.Agent(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res := exec(t, a, "echo ok"); res.Stdout != "ok\n" {
		t.Fatalf("exec: %+v", res)
	}
	if err := f.m.Stop(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if st := f.m.Observe(ctx, dir, rec); st.State != instance.Stopped || st.Cause != instance.CauseRequested {
		t.Fatalf("stopped: %+v", st)
	}
	if err := f.m.Stop(ctx, dir); err != nil { // idempotent
		t.Fatal(err)
	}
	// Started again on request.
	if st, err := f.m.Start(ctx, dir, rec); err != nil || st.State != instance.Running {
		t.Fatalf("restart: %+v %v", st, err)
	}
	prior, err := f.m.Delete(ctx, dir, rec)
	if err != nil || prior != instance.Running {
		t.Fatalf("delete: %q %v", prior, err)
	}
	if _, _, err := f.m.Open(instance.KindVM, rec.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("open after delete: %v", err)
	}
}

func TestOpenAndList(t *testing.T) {
	f := newFixture(t)
	_, vmRec := f.create(t, newRecord(instance.KindVM))
	time.Sleep(2 * time.Millisecond)
	_, vm2 := f.create(t, newRecord(instance.KindVM))
	_, wsRec := f.create(t, newRecord(instance.KindWorkspace))
	if _, _, err := f.m.Open(instance.KindWorkspace, vmRec.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("vm opened as workspace: %v", err)
	}
	if _, _, err := f.m.Open(instance.KindVM, "../etc"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("bad id: %v", err)
	}
	if _, _, err := f.m.Open(instance.KindVM, wsRec.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("workspace opened as vm: %v", err)
	}
	// A run lives beside VMs but is not one.
	if _, end, err := f.m.BeginRun(context.Background(), newRecord(instance.KindVM)); err != nil {
		t.Fatal(err)
	} else {
		defer end()
	}
	_, recs, err := f.m.List(instance.KindVM)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].ID != vmRec.ID || recs[1].ID != vm2.ID {
		t.Fatalf("list: %+v", recs)
	}
}

func TestStartRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rec := newRecord(instance.KindVM)
	rec.Environment = "missing:1"
	dir, rec := f.create(t, rec)
	if _, err := f.m.Start(ctx, dir, rec); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing environment: %v", err)
	}
	past := time.Now().Add(-time.Second)
	rec = newRecord(instance.KindVM)
	rec.ExpiresAt = &past
	dir, rec = f.create(t, rec)
	if _, err := f.m.Start(ctx, dir, rec); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("expired: %v", err)
	}
	// A boot that fails is reported with the supervisor's reason.
	dir, rec = f.create(t, newRecord(instance.KindVM))
	os.WriteFile(dir.Path(fakevmm.FailFile), nil, 0o600)
	if _, err := f.m.Start(ctx, dir, rec); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("failed boot: %v", err)
	}
	if st := f.m.Observe(ctx, dir, rec); st.State != instance.Broken || st.Cause != instance.CauseBootFailed {
		t.Fatalf("after failed boot: %+v", st)
	}
	// A guest whose preparation fails is not left serving commands.
	dir, rec = f.create(t, newRecord(instance.KindVM))
	f.failPrep.Store(true)
	if _, err := f.m.Start(ctx, dir, rec); err == nil || !strings.Contains(err.Error(), "prepare failed") {
		t.Fatalf("failed prepare: %v", err)
	}
	f.failPrep.Store(false)
	if st := f.m.Observe(ctx, dir, rec); st.State == instance.Running {
		t.Fatalf("unprepared guest runs: %+v", st)
	}
	// No binary, no supervisor.
	m := New(Config{Dirs: f.dirs, Binary: func() (string, error) { return "", errors.New("no binary") }})
	dir, rec = f.create(t, newRecord(instance.KindVM))
	if _, err := m.Start(ctx, dir, rec); err == nil {
		t.Fatal("started without a binary")
	}
}

// A boot that outlives the boot timeout is killed, not left behind.
func TestBootTimeout(t *testing.T) {
	f := newFixture(t)
	f.m.cfg.BootTimeout = 500 * time.Millisecond
	dir, rec := f.create(t, newRecord(instance.KindVM))
	os.WriteFile(dir.Path(fakevmm.NoAgent), nil, 0o600)
	if _, err := f.m.Start(context.Background(), dir, rec); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("boot timeout: %v", err)
	}
	if _, alive := instance.SupervisorPid(dir); alive {
		t.Fatal("supervisor of a timed-out boot still alive")
	}
}

// The next command restarts a workspace on the same disk after a crash, a
// stop, or when its guest stopped answering (unresponsive).
func TestEnsureRunningRecovers(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir, rec := f.create(t, newRecord(instance.KindWorkspace))
	a, err := f.m.EnsureRunning(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, a, "true")

	// Crash of the VMM: broken, then restarted by the next command.
	fakevmm.Crash(dir)
	waitState(t, f, dir, rec, instance.Broken)
	a, err = f.m.EnsureRunning(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, a, "true")

	// A frozen guest: observed unresponsive with its typed cause.
	fakevmm.Freeze(dir)
	st := waitState(t, f, dir, rec, instance.Unresponsive)
	if st.Cause != instance.CauseAgentSilent || st.Reason == "" {
		t.Fatalf("unresponsive: %+v", st)
	}
	// A VM in that state is not restarted behind the user's back; the
	// error says how.
	vrec := rec
	vrec.Kind = instance.KindVM
	if _, err := f.m.Agent(ctx, dir, vrec); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "unresponsive") || !strings.Contains(err.Error(), "vm stop") {
		t.Fatalf("agent of an unresponsive vm: %v", err)
	}
	// The workspace's next command restarts it on the same disk.
	a, err = f.m.EnsureRunning(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, a, "true")
	boots, _ := fakevmm.Boots(dir)
	if len(boots) != 3 {
		t.Fatalf("boots: %d", len(boots))
	}
	for _, b := range boots {
		if b.WorkspaceDisk != "generation 0" {
			t.Fatalf("booted on another disk: %+v", b)
		}
	}
	if n := f.prepared.Load(); n != 3 {
		t.Fatalf("prepare ran %d times for 3 boots", n)
	}
	// A guest that is merely slow is not restarted.
	fakevmm.Freeze(dir)
	waitState(t, f, dir, rec, instance.Unresponsive)
	go func() { time.Sleep(100 * time.Millisecond); fakevmm.Thaw(dir) }()
	a, err = f.m.EnsureRunning(ctx, dir, rec)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if boots, _ := fakevmm.Boots(dir); len(boots) != 3 {
		t.Fatalf("a slow guest was restarted: %d boots", len(boots))
	}
}

func waitState(t *testing.T, f *fixture, dir vmdir.Dir, rec instance.Record, want string) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var st Status
	for time.Now().Before(deadline) {
		if st = f.m.Observe(context.Background(), dir, rec); st.State == want {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("state %q never came: %+v", want, st)
	return st
}

// freshDisk is a reset's Fresh step: like mkfs, it takes a while and then
// renames the new disk over the old one.
func freshDisk(rec instance.Record, gen string) func(context.Context) error {
	return func(context.Context) error {
		time.Sleep(300 * time.Millisecond)
		return fsutil.WriteFileAtomic(rec.WorkspaceDisk, []byte(gen), 0o600)
	}
}

// Reset and commands run concurrently: the guest that runs after the reset
// must have booted on the new disk. The old ResetWorkspace released the
// lock between the stop and the start, so a concurrent command restarted
// the guest on the old disk, and the reset then restored into it; run
// against that sequence (resetDroppingLock below), this test fails.
func TestResetHoldsLockAgainstConcurrentExec(t *testing.T) {
	f := newFixture(t)
	testResetRace(t, t, f, f.m.Reset)
}

// failer is the part of testing.T the race test fails through.
type failer interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

func testResetRace(rt *testing.T, t failer, f *fixture, reset func(context.Context, vmdir.Dir, instance.Record, ResetSteps) error) {
	ctx := context.Background()
	dir, rec := f.create(rt, newRecord(instance.KindWorkspace))
	if _, err := f.m.Start(ctx, dir, rec); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var execs atomic.Int32
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, err := f.m.EnsureRunning(ctx, dir, rec)
				if err != nil {
					continue // the guest went away under it: the reset's stop
				}
				if _, err := a.Exec(ctx, agentapi.ExecRequest{Shell: "true", TimeoutMS: 5000}, nil); err == nil {
					execs.Add(1)
				}
				a.Close()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	var restored atomic.Bool
	for i := 1; i <= 2; i++ {
		gen := "generation " + string(rune('0'+i))
		err := reset(ctx, dir, rec, ResetSteps{
			Fresh: freshDisk(rec, gen),
			Restore: func(ctx context.Context, a *agentapi.Client, r *instance.Record) error {
				_, err := a.Health(ctx)
				restored.Store(true)
				return err
			},
		})
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		boots, _ := fakevmm.Boots(dir)
		if last := boots[len(boots)-1]; last.WorkspaceDisk != gen {
			close(stop)
			wg.Wait()
			t.Fatalf("after reset %d the guest runs on %q, not on the new disk %q (%d boots)", i, last.WorkspaceDisk, gen, len(boots))
		}
	}
	close(stop)
	wg.Wait()
	if !restored.Load() || execs.Load() == 0 {
		t.Fatalf("restored %v, execs %d", restored.Load(), execs.Load())
	}
	events, _ := os.ReadFile(dir.Path(vmdir.Events))
	if !strings.Contains(string(events), `"reset"`) {
		rt.Errorf("no reset event:\n%s", events)
	}
}

// resetDroppingLock is the old ResetWorkspace's sequence: stop under the
// lock, then the fresh disk and the start each on their own.
func (m *Manager) resetDroppingLock(ctx context.Context, dir vmdir.Dir, rec instance.Record, steps ResetSteps) error {
	if err := m.Stop(ctx, dir); err != nil {
		return err
	}
	if err := steps.Fresh(ctx); err != nil {
		return err
	}
	if _, err := m.Start(ctx, dir, rec); err != nil {
		return err
	}
	return m.Update(ctx, dir, rec.Kind, func(r *instance.Record) error {
		return steps.Restore(ctx, m.Client(dir), r)
	})
}

// The race test is a real test: against the old sequence it fails.
func TestResetRaceDetectsOldSequence(t *testing.T) {
	f := newFixture(t)
	ft := &fakeT{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testResetRace(t, ft, f, f.m.resetDroppingLock)
	}()
	<-done
	if !ft.failed {
		t.Fatal("the race test passed against the lock-dropping reset")
	}
}

// fakeT records a failure instead of failing the test.
type fakeT struct {
	T      *testing.T
	failed bool
}

func (f *fakeT) Fatal(args ...any) {
	f.failed = true
	f.T.Log(append([]any{"expected failure:"}, args...)...)
	runtime.Goexit()
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = true
	f.T.Logf("expected failure: "+format, args...)
	runtime.Goexit()
}

func TestResetRefusesExpired(t *testing.T) {
	f := newFixture(t)
	past := time.Now().Add(-time.Second)
	rec := newRecord(instance.KindWorkspace)
	rec.ExpiresAt = &past
	dir, rec := f.create(t, rec)
	if err := f.m.Reset(context.Background(), dir, rec, ResetSteps{}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("reset of an expired workspace: %v", err)
	}
	// Fresh failing stops the reset before any start.
	dir, rec = f.create(t, newRecord(instance.KindWorkspace))
	err := f.m.Reset(context.Background(), dir, rec, ResetSteps{Fresh: func(context.Context) error { return errors.New("no disk") }})
	if err == nil || !strings.Contains(err.Error(), "no disk") {
		t.Fatalf("failed fresh: %v", err)
	}
}

// Reap removes expired and broken instances and nothing else.
func TestReap(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// A TTL of one second ends the first one whenever the host lets its
	// start run: before the start (refused, by design), during its boot
	// (the start fails) or after it. Each way it ends expired.
	soon := time.Now().Add(time.Second)
	rec := newRecord(instance.KindVM)
	rec.TTLSeconds, rec.ExpiresAt = 1, &soon
	expDir, expRec := f.create(t, rec)
	if _, err := f.m.Start(ctx, expDir, expRec); err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatal(err)
	}
	brokenDir, brokenRec := f.create(t, newRecord(instance.KindVM))
	if _, err := f.m.Start(ctx, brokenDir, brokenRec); err != nil {
		t.Fatal(err)
	}
	supervisor.Kill(brokenDir)
	_ = supervisor.WaitExit(ctx, brokenDir)
	liveDir, liveRec := f.create(t, newRecord(instance.KindVM))
	if _, err := f.m.Start(ctx, liveDir, liveRec); err != nil {
		t.Fatal(err)
	}
	_, createdRec := f.create(t, newRecord(instance.KindVM))
	waitState(t, f, expDir, expRec, instance.Expired)
	reaped, err := f.m.Reap(ctx, instance.KindVM)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range reaped {
		got[r.ID] = r.PriorState
	}
	if len(got) != 2 || got[expRec.ID] != instance.Expired || got[brokenRec.ID] != instance.Broken {
		t.Fatalf("reaped: %+v", reaped)
	}
	_, recs, _ := f.m.List(instance.KindVM)
	if len(recs) != 2 || recs[0].ID != liveRec.ID || recs[1].ID != createdRec.ID {
		t.Fatalf("left: %+v", recs)
	}
}

// A supervisor that is alive but does not answer in time (here stopped
// with SIGSTOP; on a loaded host, busy) is not gone: reap leaves its
// instance, which answers again once it runs.
func TestReapLeavesBusySupervisor(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir, rec := f.create(t, newRecord(instance.KindVM))
	if _, err := f.m.Start(ctx, dir, rec); err != nil {
		t.Fatal(err)
	}
	pid, alive := instance.SupervisorPid(dir)
	if !alive {
		t.Fatal("no supervisor")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	// A stop takes effect when every thread of the process got it: on a
	// loaded host, after kill returns (the process was seen answering
	// one more request, state R, with the stop still pending).
	for deadline := time.Now().Add(5 * time.Second); !stoppedState(pid) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if st := f.m.Observe(ctx, dir, rec); st.Cause != instance.CauseSupervisorSilent {
		t.Fatalf("a stopped supervisor observed as %+v", st)
	}
	reaped, err := f.m.Reap(ctx, instance.KindVM)
	if err != nil || len(reaped) != 0 {
		t.Fatalf("reaped a busy supervisor's instance: %+v %v", reaped, err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	waitState(t, f, dir, rec, instance.Running)
}

// Reconcile removes what interrupted work left (dead runs, half-deleted
// and unrecorded directories), counts it, and touches nothing alive.
func TestReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	old := time.Now().Add(-time.Hour)
	// A run of this (live) process.
	liveDir, end, err := f.m.BeginRun(ctx, newRecord(instance.KindVM))
	if err != nil {
		t.Fatal(err)
	}
	// A VM and a workspace of any state stay.
	vmDir, _ := f.create(t, newRecord(instance.KindVM))
	wsDir, _ := f.create(t, newRecord(instance.KindWorkspace))
	// A run whose process died: its owner pid names a process that is gone.
	deadRun := newRecord(instance.KindRun)
	dir, err := vmdir.Open(f.dirs.VMs(), deadRun.ID)
	if err != nil {
		t.Fatal(err)
	}
	dir.Create()
	instance.Save(dir, deadRun)
	os.WriteFile(dir.Path(vmdir.SupervisorPid), []byte("999999 1\n"), 0o600)
	// Half-deleted directories, in both parents.
	os.MkdirAll(filepath.Join(f.dirs.VMs(), ".deleting-abc", "x"), 0o700)
	os.MkdirAll(filepath.Join(f.dirs.Workspaces(), ".deleting-def"), 0o700)
	// A directory without a record, old, and one just being created.
	stale := filepath.Join(f.dirs.VMs(), "stale1")
	os.MkdirAll(stale, 0o700)
	os.Chtimes(stale, old, old)
	fresh := filepath.Join(f.dirs.VMs(), "fresh1")
	os.MkdirAll(fresh, 0o700)

	// f.m reconciled on its first Create; a new manager (a new client)
	// finds the leftovers.
	m := New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary})
	r := m.Reconcile(ctx)
	if r.InterruptedRuns != 1 || r.HalfDeleted != 2 || r.Unrecorded != 1 || r.Removed() != 4 || len(r.Failed) != 0 || r.Incomplete {
		t.Fatalf("report: %+v", r)
	}
	for _, p := range []string{string(dir), stale, filepath.Join(f.dirs.VMs(), ".deleting-abc")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left", p)
		}
	}
	for _, p := range []string{string(liveDir), fresh, string(vmDir), string(wsDir)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	// Once per manager: the same report again.
	if again := m.Reconcile(ctx); again.Removed() != 4 {
		t.Fatalf("second report: %+v", again)
	}
	if err := end(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(string(liveDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("run directory left after end")
	}
	// A cancelled context leaves the pass incomplete, and says so.
	m2 := New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if r := m2.Reconcile(cctx); !r.Incomplete {
		t.Fatalf("cancelled pass: %+v", r)
	}
}

func TestUpdate(t *testing.T) {
	f := newFixture(t)
	dir, rec := f.create(t, newRecord(instance.KindWorkspace))
	err := f.m.Update(context.Background(), dir, rec.Kind, func(r *instance.Record) error {
		r.TTLSeconds = 42
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, got, _ := f.m.Open(instance.KindWorkspace, rec.ID); got.TTLSeconds != 42 {
		t.Fatalf("update lost: %+v", got)
	}
	if err := f.m.Update(context.Background(), dir, rec.Kind, func(*instance.Record) error { return errors.New("no") }); err == nil {
		t.Fatal("update error lost")
	}
	f.m.Event(dir, "custom", map[string]any{"k": "v"})
	if b, _ := os.ReadFile(dir.Path(vmdir.Events)); !strings.Contains(string(b), `"custom"`) {
		t.Fatalf("events: %s", b)
	}
}

// stoppedState reports whether process pid is stopped (state T in
// /proc/PID/stat).
func stoppedState(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'T'
}

// A run's record is written while its guest boots (BeginRun); a run that
// ends at once waits for it, so nothing is written into the removed
// directory and nothing is left; one that lives has its record, naming
// this process, for Reconcile.
func TestBeginRunRecordsWhileBooting(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for range 20 {
		dir, end, err := f.m.BeginRun(ctx, newRecord(instance.KindVM))
		if err != nil {
			t.Fatal(err)
		}
		if err := end(); err != nil {
			t.Fatalf("end at once: %v", err)
		}
		if _, err := os.Stat(string(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left: %v", dir, err)
		}
	}
	dir, end, err := f.m.BeginRun(ctx, newRecord(instance.KindVM))
	if err != nil {
		t.Fatal(err)
	}
	defer end()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := instance.Load(dir, instance.KindRun)
		if pid, alive := instance.SupervisorPid(dir); err == nil && alive && pid == os.Getpid() {
			if rec.Kind != instance.KindRun {
				t.Fatalf("record: %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record naming this process: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary}).Reconcile(ctx); r.Removed() != 0 {
		t.Fatalf("a live run reconciled away: %+v", r)
	}
}
