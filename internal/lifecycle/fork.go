package lifecycle

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// forkStagingPattern names the private directory inside a source workspace
// that holds its saved state while forks restore from it.
const forkStagingPattern = ".fork-*"

// sweepForkStaging removes the fork staging directories in dir (a killed
// fork's saved RAM and upper layer copy, hundreds of MB) and returns how
// many it removed. The caller holds the instance lock, so no fork of dir
// is running.
func sweepForkStaging(dir vmdir.Dir) (n int, err error) {
	old, _ := filepath.Glob(dir.Path(forkStagingPattern))
	for _, p := range old {
		if rerr := os.RemoveAll(p); rerr != nil {
			err = errors.Join(err, rerr)
			continue
		}
		n++
	}
	return n, err
}

// Saved is a live-saved source: the state and the copy of its upper layer
// that forks are made from, valid while the create callback of Fork runs.
type Saved struct {
	supervisor.ForkSaveResult
	// Disk is the copy of the source's upper layer at the saved instant.
	Disk string
}

// Fork saves the running instance in dir (RAM, devices and the upper
// layer of its workspace, taken at one instant while the guest is paused;
// it then resumes) and calls create with it. It holds the source's lock
// throughout, so the source is not stopped, reset or deleted under its
// forks, and removes the saved state when create returns: forks must be
// running (restored) by then. A stopped, broken or unresponsive source is
// refused; nothing is left behind on failure.
func (m *Manager) Fork(ctx context.Context, dir vmdir.Dir, rec instance.Record, create func(ctx context.Context, saved Saved) error) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := instance.Load(dir, rec.Kind)
	if err != nil {
		return err
	}
	if cur.Stopped {
		return errdefs.New(errdefs.ErrFailedPrecondition, "start it with `pyro "+rec.Kind+" start "+rec.ID+"`, then fork it",
			"%s %q is stopped; only a running %s can be forked", rec.Kind, rec.ID, rec.Kind)
	}
	if st := supervisor.Observe(ctx, dir, cur); st.State != instance.Running {
		hint := "run a command in it (which restarts it) and fork it again"
		if st.State == instance.Expired {
			hint = "create a new one"
		}
		why := string(st.State)
		if st.Reason != "" {
			why += " (" + st.Reason + ")"
		}
		return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is %s; only a running %s can be forked", rec.Kind, rec.ID, why, rec.Kind)
	}
	// Under the lock no other fork of this source runs: what a killed
	// fork left behind goes now.
	sweepForkStaging(dir)
	staging, err := os.MkdirTemp(string(dir), forkStagingPattern)
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging)
	req := supervisor.ForkSaveRequest{State: filepath.Join(staging, "state"), Disk: filepath.Join(staging, "upper.img")}
	res, err := supervisor.NewClient(dir).ForkSave(ctx, req)
	if err != nil {
		return err
	}
	instance.AppendEvent(dir, "forked", map[string]any{"paused_ms": res.PausedMS, "state_bytes": res.StateBytes})
	return create(ctx, Saved{ForkSaveResult: res, Disk: req.Disk})
}
