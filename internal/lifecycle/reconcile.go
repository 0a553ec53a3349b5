package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Reconcile (containerd's shim_load idea): on a manager's first use, within
// one time budget, remove what interrupted work left behind. Nothing goes
// silently: every removal is logged and counted in the report.
//
//   - directories of one-shot runs whose owning process is dead (a run's
//     record names its owner; a killed `pyro run` leaves its directory);
//   - hidden ".deleting-" directories of interrupted deletes;
//   - directories with no record at all, older than unrecordedAge (a crash
//     between creating a directory and writing its record);
//   - half-made instances: a workspace whose creating process died before
//     it was complete (instance.Creator), its detached VM included;
//   - fork staging directories inside an instance that no fork is using
//     (a `workspace fork` killed with -9 leaves its saved RAM and upper
//     layer copy; the instance lock, free, says no fork runs).
//
// Live instances, and VMs and workspaces of any state, are never touched:
// reaping those is Reap's job, on request.

// reconcileBudget bounds one reconcile pass.
const reconcileBudget = 2 * time.Second

// unrecordedAge keeps a directory being created right now (its record not
// yet written) safe from a concurrent reconcile.
const unrecordedAge = 5 * time.Minute

// ReconcileReport counts what a reconcile pass removed.
type ReconcileReport struct {
	// InterruptedRuns are directories of one-shot runs whose process died.
	InterruptedRuns int
	// HalfDeleted are hidden directories of interrupted deletes.
	HalfDeleted int
	// Unrecorded are directories without a record.
	Unrecorded int
	// HalfMade are instances whose creating process died before they were
	// complete.
	HalfMade int
	// ForkStaging are killed forks' staging directories.
	ForkStaging int
	// Failed describes removals that failed (they are retried next time).
	Failed []string
	// Incomplete is true when the time budget ran out first.
	Incomplete bool
	Duration   time.Duration
}

// Removed is the number of leftovers removed.
func (r ReconcileReport) Removed() int {
	return r.InterruptedRuns + r.HalfDeleted + r.Unrecorded + r.HalfMade + r.ForkStaging
}

type reconcileOnce struct {
	once   sync.Once
	report ReconcileReport
}

// Reconcile runs the reconcile pass once per Manager (later calls return
// the first pass's report).
func (m *Manager) Reconcile(ctx context.Context) ReconcileReport {
	m.rec.once.Do(func() {
		start := time.Now()
		var r ReconcileReport
		m.sweep(ctx, start.Add(reconcileBudget), &r)
		r.Duration = time.Since(start)
		if r.Removed() > 0 || len(r.Failed) > 0 {
			m.log.Info("reconciled leftovers of interrupted runs", "runs", r.InterruptedRuns, "half_deleted", r.HalfDeleted,
				"unrecorded", r.Unrecorded, "half_made", r.HalfMade, "fork_staging", r.ForkStaging, "failed", len(r.Failed), "incomplete", r.Incomplete)
		}
		m.rec.report = r
	})
	return m.rec.report
}

// sweep removes leftovers under the VM and workspace directories until
// deadline.
func (m *Manager) sweep(ctx context.Context, deadline time.Time, r *ReconcileReport) {
	for _, parent := range []string{m.cfg.Dirs.VMs(), m.cfg.Dirs.Workspaces()} {
		ents, err := os.ReadDir(parent)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				r.Failed = append(r.Failed, fmt.Sprintf("read %s: %v", parent, err))
			}
			continue
		}
		for _, e := range ents {
			if ctx.Err() != nil || time.Now().After(deadline) {
				r.Incomplete = true
				return
			}
			if !e.IsDir() {
				continue
			}
			path := filepath.Join(parent, e.Name())
			if vmdir.IsHidden(e.Name()) {
				m.removeLeftover(path, "half-deleted directory", &r.HalfDeleted, r)
				continue
			}
			m.checkLeftover(path, r)
		}
	}
}

func (m *Manager) checkLeftover(path string, r *ReconcileReport) {
	dir := vmdir.Dir(path)
	rec, err := instance.Load(dir, "vm")
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) && !isNotFound(dir) {
			return // a record we cannot read is not ours to judge
		}
		if st, err := os.Stat(path); err == nil && time.Since(st.ModTime()) > unrecordedAge {
			m.hideAndRemove(dir, "directory without a record", &r.Unrecorded, r)
		}
		return
	}
	if pid, alive := instance.Creator(dir); pid != 0 && !alive {
		supervisor.Kill(dir) // a workspace's VM runs detached from its creator
		m.hideAndRemove(dir, "half-made "+rec.Kind, &r.HalfMade, r)
		return
	}
	if rec.Kind != instance.KindRun {
		m.sweepForks(dir, r)
		return
	}
	if _, alive := instance.SupervisorPid(dir); alive {
		return // the run is still going
	}
	if pid, _ := instance.SupervisorPid(dir); pid == 0 {
		// Owner not written yet: a run being set up right now, unless old.
		if st, err := os.Stat(path); err != nil || time.Since(st.ModTime()) < unrecordedAge {
			return
		}
	}
	supervisor.Kill(dir) // its VMM, should it have outlived the run
	m.hideAndRemove(dir, "directory of an interrupted run", &r.InterruptedRuns, r)
}

// sweepForks removes a killed fork's staging directories in dir when the
// instance lock is free (waiting for it briefly: a fork holds it while it
// uses its staging directory).
func (m *Manager) sweepForks(dir vmdir.Dir, r *ReconcileReport) {
	if old, _ := filepath.Glob(dir.Path(forkStagingPattern)); len(old) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return // busy: a fork (or another change) runs; next time
	}
	defer unlock()
	n, err := sweepForkStaging(dir)
	r.ForkStaging += n
	if err != nil {
		r.Failed = append(r.Failed, fmt.Sprintf("fork staging in %s: %v", dir, err))
	}
}

// isNotFound reports whether dir has no record file.
func isNotFound(dir vmdir.Dir) bool {
	_, err := os.Stat(dir.Path(vmdir.Record))
	return errors.Is(err, os.ErrNotExist)
}

// hideAndRemove deletes dir by renaming it hidden first (vmdir.Remove), so
// a crash half-way leaves a hidden leftover, never a half instance.
func (m *Manager) hideAndRemove(dir vmdir.Dir, what string, count *int, r *ReconcileReport) {
	if err := dir.Remove(); err != nil {
		r.Failed = append(r.Failed, fmt.Sprintf("remove %s %s: %v", what, dir, err))
		m.log.Warn("cannot remove leftover", "what", what, "path", string(dir), "err", err)
		return
	}
	*count++
	m.log.Info("removed leftover", "what", what, "path", string(dir))
}

func (m *Manager) removeLeftover(path, what string, count *int, r *ReconcileReport) {
	if err := os.RemoveAll(path); err != nil {
		r.Failed = append(r.Failed, fmt.Sprintf("remove %s %s: %v", what, path, err))
		m.log.Warn("cannot remove leftover", "what", what, "path", path, "err", err)
		return
	}
	*count++
	m.log.Info("removed leftover", "what", what, "path", path)
}
