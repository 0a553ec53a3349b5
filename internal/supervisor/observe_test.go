package supervisor

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Observe derives the state from what is on disk and alive, never from a
// stored "running" field.
func TestObserve(t *testing.T) {
	ctx := context.Background()
	newDir := func() vmdir.Dir {
		d := vmdir.Dir(t.TempDir())
		return d
	}
	rec := instance.Record{ID: "abc"}

	if st := Observe(ctx, newDir(), rec); st.State != instance.Created {
		t.Errorf("fresh: %+v", st)
	}

	d := newDir()
	instance.WriteExit(d, instance.Stopped, instance.CauseRequested, "stopped on request")
	if st := Observe(ctx, d, rec); st.State != instance.Stopped || st.Reason == "" {
		t.Errorf("exit note: %+v", st)
	}

	past := time.Now().Add(-time.Minute)
	if st := Observe(ctx, newDir(), instance.Record{ID: "abc", ExpiresAt: &past}); st.State != instance.Expired {
		t.Errorf("ttl passed: %+v", st)
	}

	// A pid file for a process that is gone, and no exit note: broken.
	d = newDir()
	os.WriteFile(d.Path(vmdir.SupervisorPid), []byte("999999 12345\n"), 0o600)
	if st := Observe(ctx, d, rec); st.State != instance.Broken || st.Reason == "" {
		t.Errorf("dead supervisor: %+v", st)
	}

	// Our own pid with the wrong start time is a recycled pid, not alive.
	d = newDir()
	os.WriteFile(d.Path(vmdir.SupervisorPid), []byte(fmt.Sprintf("%d 1\n", os.Getpid())), 0o600)
	if _, alive := instance.SupervisorPid(d); alive {
		t.Error("recycled pid taken as alive")
	}

	// A live process that does not answer on the socket.
	d = newDir()
	instance.WritePid(d)
	if st := Observe(ctx, d, rec); st.State != instance.Broken || st.Cause != instance.CauseSupervisorSilent {
		t.Errorf("silent supervisor: %+v", st)
	}
}
