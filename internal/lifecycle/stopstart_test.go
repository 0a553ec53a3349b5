package lifecycle

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// TestStopKeepStartStopped: a workspace stopped on purpose has no
// supervisor, refuses commands (EnsureRunning, Agent, Reset) with a hint
// to start it instead of booting it, refuses a second stop without
// changing anything, and boots again on the same disk with StartStopped.
// A crash (killed supervisor) still restarts on the next command.
func TestStopKeepStartStopped(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir, rec := f.create(t, newRecord(instance.KindWorkspace))
	if _, err := f.m.Start(ctx, dir, rec); err != nil {
		t.Fatal(err)
	}
	if err := f.m.StopKeep(ctx, dir, instance.KindWorkspace); err != nil {
		t.Fatal(err)
	}
	if _, alive := instance.SupervisorPid(dir); alive {
		t.Fatal("a stopped workspace still has a supervisor")
	}
	cur, _ := instance.Load(dir, instance.KindWorkspace)
	if !cur.Stopped {
		t.Fatal("record not marked stopped")
	}
	if st := f.m.Observe(ctx, dir, cur); st.State != instance.Stopped {
		t.Fatalf("observed %+v", st)
	}
	isStopped := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "workspace start "+rec.ID) {
			t.Fatalf("%s on a stopped workspace: %v", what, err)
		}
	}
	// rec is the record from before the stop: the lock-side check catches it.
	_, err := f.m.EnsureRunning(ctx, dir, rec)
	isStopped("EnsureRunning (stale record)", err)
	_, err = f.m.EnsureRunning(ctx, dir, cur)
	isStopped("EnsureRunning", err)
	_, err = f.m.Agent(ctx, dir, cur)
	isStopped("Agent", err)
	isStopped("Reset", f.m.Reset(ctx, dir, cur, ResetSteps{}))
	if boots, _ := fakevmm.Boots(dir); len(boots) != 1 {
		t.Fatalf("a refused command booted the guest: %d boots", len(boots))
	}
	err = f.m.StopKeep(ctx, dir, instance.KindWorkspace)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "already stopped") {
		t.Fatalf("second stop: %v", err)
	}
	st, err := f.m.StartStopped(ctx, dir, instance.KindWorkspace)
	if err != nil || st.State != instance.Running {
		t.Fatalf("start: %+v %v", st, err)
	}
	if cur, _ := instance.Load(dir, instance.KindWorkspace); cur.Stopped {
		t.Fatal("still marked stopped after start")
	}
	// Idempotent start: no second boot.
	if _, err := f.m.StartStopped(ctx, dir, instance.KindWorkspace); err != nil {
		t.Fatal(err)
	}
	if boots, _ := fakevmm.Boots(dir); len(boots) != 2 {
		t.Fatalf("boots %d, want 2", len(boots))
	}
	// A crash is not a stop: the next command restarts the guest.
	supervisor.Kill(dir)
	if err := supervisor.WaitExit(ctx, dir); err != nil {
		t.Fatal(err)
	}
	cur, _ = instance.Load(dir, instance.KindWorkspace)
	a, err := f.m.EnsureRunning(ctx, dir, cur)
	if err != nil {
		t.Fatalf("after a crash: %v", err)
	}
	a.Close()
}
