package lifecycle

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A stop on purpose (StopKeep) differs from a crash: after a crash the
// next command restarts the guest on the same disk (EnsureRunning), but a
// stopped instance stays down, costing no memory or CPU (no supervisor, no
// VMM), until StartStopped. Both transitions hold the instance's lock, and
// the record's Stopped flag is written under it before the guest goes down,
// so a concurrent command either ran before the stop or is refused.

// stoppedError is what a command on a stopped instance gets.
func stoppedError(rec instance.Record) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, "start it with `pyro "+rec.Kind+" start "+rec.ID+"`",
		"%s %q is stopped", rec.Kind, rec.ID)
}

// StopKeep powers an instance off on purpose and keeps everything it has
// (disk, snapshots, history). The guest is asked to power off first, which
// flushes its disks. Stopping a stopped instance is ErrFailedPrecondition
// and changes nothing.
func (m *Manager) StopKeep(ctx context.Context, dir vmdir.Dir, kind string) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := instance.Load(dir, kind)
	if err != nil {
		return err
	}
	if rec.Stopped {
		return errdefs.New(errdefs.ErrFailedPrecondition, "start it with `pyro "+kind+" start "+rec.ID+"`, or delete it",
			"%s %q is already stopped", kind, rec.ID)
	}
	rec.Stopped = true
	if err := instance.Save(dir, rec); err != nil {
		return err
	}
	if err := m.stopLocked(ctx, dir); err != nil {
		supervisor.Kill(dir)
	}
	// A supervisor stopped by force leaves no exit note; without one the
	// instance would read as broken (and be reaped) instead of stopped.
	if _, ok := instance.ReadExit(dir); !ok {
		_ = instance.WriteExit(dir, instance.Stopped, instance.CauseRequested, "stopped on request")
	}
	instance.AppendEvent(dir, "stopped_by_request", nil)
	return nil
}

// StartStopped boots an instance stopped with StopKeep (or any instance
// that is not running) and clears its Stopped flag. Starting a running
// instance returns its status.
func (m *Manager) StartStopped(ctx context.Context, dir vmdir.Dir, kind string) (Status, error) {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return Status{}, err
	}
	defer unlock()
	rec, err := instance.Load(dir, kind)
	if err != nil {
		return Status{}, err
	}
	if rec.Stopped {
		rec.Stopped = false
		if err := instance.Save(dir, rec); err != nil {
			return Status{}, err
		}
		instance.AppendEvent(dir, "started_by_request", nil)
	}
	return m.startLocked(ctx, dir, rec)
}
