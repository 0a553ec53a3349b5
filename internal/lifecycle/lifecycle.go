// Package lifecycle is the one owner of VM and workspace lifecycles: it
// creates, starts, stops, restarts (on the next command), resets, deletes
// and reaps instances, and it alone takes the per-instance lock and talks
// to supervisors. The public SDK calls it and never touches supervisor
// files.
//
// Transitions that change what runs (Start, Stop, Delete, Reset) hold the
// instance's lock (an flock, so it also serialises other processes) for
// their whole length. Reset in particular keeps it from the stop to the
// restored start, so a concurrent command can never restart the guest on
// the old disk in between. Observing a status takes no lock.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Config is what a Manager needs from its caller.
type Config struct {
	Dirs   statedir.Dirs
	Logger *slog.Logger
	// Binary resolves the pyro executable that runs supervisors (the test
	// binary in tests).
	Binary func() (string, error)
	// CheckEnvironment fails when an environment cannot boot (not
	// installed, damaged); nil checks nothing.
	CheckEnvironment func(name string) error
	// PrepareGuest runs after every boot of an instance (create, restart,
	// reset), under its lock, before any command can reach the guest:
	// secrets are materialised there.
	PrepareGuest func(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client) error
	// BootTimeout bounds the wait for a guest to answer (default 120 s).
	BootTimeout time.Duration
	// RecoverDeadline is how long an unresponsive guest gets to answer
	// again before the next command restarts it (default 10 s).
	RecoverDeadline time.Duration
}

// Status is an instance's observed status (the supervisor's wire type).
type Status = supervisor.Status

// Manager owns the lifecycles of the instances under one state root. It is
// safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger
	rec reconcileOnce
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 120 * time.Second
	}
	if cfg.RecoverDeadline == 0 {
		cfg.RecoverDeadline = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, log: cfg.Logger}
}

// Parent is the directory holding the instances of kind (runs live beside
// VMs, pooled workspaces beside workspaces).
func (m *Manager) Parent(kind string) string {
	if kind == instance.KindWorkspace || kind == instance.KindPooled {
		return m.cfg.Dirs.Workspaces()
	}
	return m.cfg.Dirs.VMs()
}

// Open returns an existing instance's directory and record. An unknown id,
// or an id of another kind, is ErrNotFound.
func (m *Manager) Open(kind, id string) (vmdir.Dir, instance.Record, error) {
	notFound := func(err error) error {
		return errdefs.Wrap(errdefs.ErrNotFound, err, "list them with `pyro "+kind+" list`", "%s %q not found", kind, id)
	}
	dir, err := vmdir.Open(m.Parent(kind), id)
	if err != nil {
		return "", instance.Record{}, notFound(err)
	}
	rec, err := instance.Load(dir, kind)
	if err != nil {
		return "", instance.Record{}, err
	}
	if rec.Kind != "" && rec.Kind != kind {
		return "", instance.Record{}, notFound(nil)
	}
	return dir, rec, nil
}

// Create makes the directory of a new instance and writes its record;
// populate, when given, runs first (a workspace's disk and secrets) and
// may change the record. On failure nothing is left behind.
func (m *Manager) Create(ctx context.Context, rec instance.Record, populate func(dir vmdir.Dir, rec *instance.Record) error) (vmdir.Dir, instance.Record, error) {
	m.Reconcile(ctx)
	dir, err := vmdir.Open(m.Parent(rec.Kind), rec.ID)
	if err != nil {
		return "", rec, err
	}
	if err := dir.Create(); err != nil {
		return "", rec, fmt.Errorf("create %s directory: %w", rec.Kind, err)
	}
	if err := m.record(dir, &rec, populate); err != nil {
		_ = dir.Remove()
		return "", rec, err
	}
	return dir, rec, nil
}

// record fills a new instance directory: populate (which may change the
// record), then the record, then the "created" event.
func (m *Manager) record(dir vmdir.Dir, rec *instance.Record, populate func(dir vmdir.Dir, rec *instance.Record) error) error {
	if populate != nil {
		if err := populate(dir, rec); err != nil {
			return err
		}
	}
	if err := instance.Save(dir, *rec); err != nil {
		return err
	}
	instance.AppendEvent(dir, "created", map[string]any{"environment": rec.Environment})
	return nil
}

// BeginRun records a one-shot run (RunInVM) owned by the calling process:
// a directory with a KindRun record naming this process, so the directory
// a killed run leaves behind is recognised and removed by Reconcile. end
// removes the directory.
//
// The directory exists on return; the reconcile pass and the record (the
// owner's pid, then the record, each made durable: ~5-20 ms of fsyncs)
// are written while the caller boots its guest, whose restore is CPU
// work that these waits on the disk overlap. Until the record is there
// the directory counts as one being created (Reconcile leaves it alone
// for unrecordedAge), as with any instance. end waits for them first, so
// nothing is written into a removed directory, and reports their error.
func (m *Manager) BeginRun(ctx context.Context, rec instance.Record) (dir vmdir.Dir, end func() error, err error) {
	rec.Kind = instance.KindRun
	dir, err = vmdir.Open(m.Parent(rec.Kind), rec.ID)
	if err != nil {
		return "", nil, err
	}
	if err := dir.Create(); err != nil {
		return "", nil, fmt.Errorf("create %s directory: %w", rec.Kind, err)
	}
	recorded := make(chan error, 1)
	go func() {
		m.Reconcile(ctx)
		recorded <- m.record(dir, &rec, func(dir vmdir.Dir, _ *instance.Record) error { return instance.WritePid(dir) })
	}()
	end = func() error {
		err := <-recorded
		return errors.Join(err, dir.Remove())
	}
	return dir, end, nil
}

// Update changes an instance's record under its lock: change gets the
// current record and edits it.
func (m *Manager) Update(ctx context.Context, dir vmdir.Dir, kind string, change func(*instance.Record) error) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	return m.updateLocked(dir, kind, change)
}

func (m *Manager) updateLocked(dir vmdir.Dir, kind string, change func(*instance.Record) error) error {
	rec, err := instance.Load(dir, kind)
	if err != nil {
		return err
	}
	if err := change(&rec); err != nil {
		return err
	}
	return instance.Save(dir, rec)
}

// Observe returns an instance's observed status.
func (m *Manager) Observe(ctx context.Context, dir vmdir.Dir, rec instance.Record) Status {
	return supervisor.Observe(ctx, dir, rec)
}

// Client returns an agent client of an instance the caller just observed
// running (no second observation). The caller closes it.
func (m *Manager) Client(dir vmdir.Dir) *agentapi.Client {
	return supervisor.NewClient(dir).Agent()
}

// Event appends an event to an instance's event log.
func (m *Manager) Event(dir vmdir.Dir, event string, fields map[string]any) {
	instance.AppendEvent(dir, event, fields)
}

// Start boots an instance under its own supervisor and returns once the
// guest agent answers (and PrepareGuest ran). Starting a running instance
// returns its status.
func (m *Manager) Start(ctx context.Context, dir vmdir.Dir, rec instance.Record) (supervisor.Status, error) {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return supervisor.Status{}, err
	}
	defer unlock()
	return m.startLocked(ctx, dir, rec)
}

func (m *Manager) startLocked(ctx context.Context, dir vmdir.Dir, rec instance.Record) (supervisor.Status, error) {
	st := supervisor.Observe(ctx, dir, rec)
	switch st.State {
	case instance.Running:
		return st, nil
	case instance.Starting:
		// Another process spawned it and gave up the lock: wait for it.
		return m.waitRunning(ctx, dir, rec, false)
	case instance.Expired:
		return st, errdefs.New(errdefs.ErrFailedPrecondition, "create a new one; `pyro "+rec.Kind+" reap` removes expired ones", "%s %q has expired", rec.Kind, rec.ID)
	}
	if m.cfg.CheckEnvironment != nil {
		if err := m.cfg.CheckEnvironment(rec.Environment); err != nil {
			return st, err
		}
	}
	bin, err := m.cfg.Binary()
	if err != nil {
		return st, err
	}
	// A hung supervisor, or a dead one's VMM: nothing of an old boot may
	// outlive the new one.
	supervisor.Kill(dir)
	if err := supervisor.WaitExit(ctx, dir); err != nil {
		return st, err
	}
	// What a killed process left half-written (leftovers.go).
	if n, err := sweepTempFiles(dir); n > 0 || err != nil {
		m.log.Info("removed temporary files left by a killed process", "dir", string(dir), "count", n, "err", err)
	}
	// Until the new supervisor writes its pid, the state reads "created".
	_ = os.Remove(dir.Path(vmdir.Exit))
	_ = os.Remove(dir.Path(vmdir.SupervisorPid))
	if err := supervisor.Spawn(bin, dir); err != nil {
		return st, err
	}
	return m.waitRunning(ctx, dir, rec, true)
}

// waitRunning asks the supervisor until the guest answers, the supervisor
// gives up (its exit note says why) or ctx ends. Each request is held by
// the supervisor until the boot ends (bootWait), so a start costs one
// request, not one every few milliseconds; the 25 ms tick only paces the
// wait for a supervisor that is not listening yet. booted says this call
// started the guest: it then runs PrepareGuest, and on failure kills
// what it started.
func (m *Manager) waitRunning(ctx context.Context, dir vmdir.Dir, rec instance.Record, booted bool) (supervisor.Status, error) {
	wctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		st := supervisor.ObserveWait(wctx, dir, rec, bootWait)
		switch st.State {
		case instance.Running:
			if booted && m.cfg.PrepareGuest != nil {
				agent := supervisor.NewClient(dir).Agent()
				err := m.cfg.PrepareGuest(ctx, dir, rec, agent)
				agent.Close()
				if err != nil {
					// A guest without its secrets must not serve commands.
					m.kill(ctx, dir)
					return st, err
				}
			}
			return st, nil
		case instance.Stopped, instance.Expired, instance.Broken:
			if st.Cause == instance.CauseSupervisorSilent {
				break // busy booting on a loaded host: keep waiting
			}
			// A supervisor that gave up exits right after saying so; wait
			// for that (bounded), so what callers observe next agrees.
			ectx, ecancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = supervisor.WaitExit(ectx, dir)
			ecancel()
			if st.State == instance.Expired {
				return st, errdefs.New(errdefs.ErrFailedPrecondition, "give it a longer ttl_seconds: it counts from creation and includes the boot",
					"%s %q expired before it finished booting", rec.Kind, rec.ID)
			}
			return st, errdefs.New(errdefs.ErrUnavailable, "see "+dir.Path(vmdir.SupervisorLog), "%s %q did not start: %s", rec.Kind, rec.ID, st.Reason)
		}
		select {
		case <-wctx.Done():
			if booted {
				m.kill(ctx, dir)
			}
			return st, errdefs.Wrap(errdefs.ErrUnavailable, wctx.Err(), "see "+dir.Path(vmdir.SupervisorLog), "%s %q did not start", rec.Kind, rec.ID)
		case <-tick.C:
		}
	}
}

// bootWait is how long one status request of waitRunning may be held.
const bootWait = 5 * time.Second

// kill ends a supervisor by force and waits (bounded) for it to go.
func (m *Manager) kill(ctx context.Context, dir vmdir.Dir) {
	supervisor.Kill(dir)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = supervisor.WaitExit(wctx, dir)
}

// Stop powers an instance off under its lock: gracefully through the
// supervisor, then by force. Stopping a stopped instance does nothing.
func (m *Manager) Stop(ctx context.Context, dir vmdir.Dir) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	return m.stopLocked(ctx, dir)
}

func (m *Manager) stopLocked(ctx context.Context, dir vmdir.Dir) error {
	if _, alive := instance.SupervisorPid(dir); !alive {
		return nil
	}
	stopCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := supervisor.NewClient(dir).Stop(stopCtx); err != nil {
		supervisor.Kill(dir)
		return supervisor.WaitExit(context.WithoutCancel(ctx), dir)
	}
	return nil
}

// Delete stops an instance and removes its directory. It returns the
// state the instance was in.
func (m *Manager) Delete(ctx context.Context, dir vmdir.Dir, rec instance.Record) (string, error) {
	prior := supervisor.Observe(ctx, dir, rec).State
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return prior, err
	}
	defer unlock()
	if err := m.stopLocked(ctx, dir); err != nil {
		supervisor.Kill(dir)
	}
	if err := dir.Remove(); err != nil {
		return prior, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "remove %s %q", rec.Kind, rec.ID)
	}
	return prior, nil
}

// Agent returns an agent client of a running instance, or
// ErrFailedPrecondition saying how to get it running. The caller closes it.
func (m *Manager) Agent(ctx context.Context, dir vmdir.Dir, rec instance.Record) (*agentapi.Client, error) {
	st := supervisor.Observe(ctx, dir, rec)
	if st.State != instance.Running {
		return nil, notRunning(rec, st)
	}
	return supervisor.NewClient(dir).Agent(), nil
}

func notRunning(rec instance.Record, st supervisor.Status) error {
	hint := "start it with `pyro vm start " + rec.ID + "`"
	switch {
	case rec.Stopped:
		return stoppedError(rec)
	case rec.Kind == instance.KindWorkspace:
		hint = "its next command restarts it, or recreate it with `pyro workspace reset " + rec.ID + "`"
	case st.State == instance.Unresponsive:
		hint = "restart it with `pyro vm stop " + rec.ID + "` and `pyro vm start " + rec.ID + "`, or delete it"
	}
	if st.Reason != "" {
		return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is %s (%s)", rec.Kind, rec.ID, st.State, st.Reason)
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is %s", rec.Kind, rec.ID, st.State)
}

// EnsureRunning returns an agent client of an instance, restarting it on
// the same disk when it is not running (after a crash, a host reboot, a
// stop) or when its guest stopped answering (unresponsive: it gets
// RecoverDeadline to answer again first). An expired instance is not
// restarted. The caller closes the client.
func (m *Manager) EnsureRunning(ctx context.Context, dir vmdir.Dir, rec instance.Record) (*agentapi.Client, error) {
	st := supervisor.Observe(ctx, dir, rec)
	if st.State == instance.Running {
		return supervisor.NewClient(dir).Agent(), nil
	}
	if rec.Stopped {
		return nil, stoppedError(rec)
	}
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Stopped on purpose while we waited for the lock: a user's stop is
	// not undone by a command (only by StartStopped).
	if cur, err := instance.Load(dir, rec.Kind); err == nil && cur.Stopped {
		return nil, stoppedError(cur)
	}
	if st = supervisor.Observe(ctx, dir, rec); st.State == instance.Unresponsive {
		if m.answersWithin(ctx, dir, m.cfg.RecoverDeadline) {
			return supervisor.NewClient(dir).Agent(), nil
		}
		m.log.Warn("restarting an unresponsive guest on the same disk", "kind", rec.Kind, "id", rec.ID, "reason", st.Reason)
		instance.AppendEvent(dir, "restart", map[string]any{"cause": string(st.Cause), "reason": st.Reason})
		if err := m.stopLocked(ctx, dir); err != nil {
			return nil, fmt.Errorf("stop unresponsive %s %q: %w", rec.Kind, rec.ID, err)
		}
	}
	if _, err := m.startLocked(ctx, dir, rec); err != nil {
		return nil, fmt.Errorf("restart %s %q: %w", rec.Kind, rec.ID, err)
	}
	return supervisor.NewClient(dir).Agent(), nil
}

// answersWithin reports whether the guest's agent answers a health call
// within d (a slow guest is not a dead one).
func (m *Manager) answersWithin(ctx context.Context, dir vmdir.Dir, d time.Duration) bool {
	hctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	agent := supervisor.NewClient(dir).Agent()
	defer agent.Close()
	_, err := agent.Health(hctx)
	return err == nil
}

// ResetSteps are a reset's instance-specific parts, run under the lock.
type ResetSteps struct {
	// Fresh runs while the guest is stopped: it replaces the disk and
	// clears what a reset clears.
	Fresh func(ctx context.Context) error
	// Restore runs once the new guest answers (and PrepareGuest ran): it
	// fills the guest and records the reset. rec is the current record,
	// saved after Restore returns.
	Restore func(ctx context.Context, agent *agentapi.Client, rec *instance.Record) error
}

// Reset stops an instance, lets Fresh replace its disk, boots it again
// and lets Restore fill it, all under one hold of its lock.
func (m *Manager) Reset(ctx context.Context, dir vmdir.Dir, rec instance.Record, steps ResetSteps) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	if st := supervisor.Observe(ctx, dir, rec); st.State == instance.Expired {
		return errdefs.New(errdefs.ErrFailedPrecondition, "create a new one", "%s %q has expired", rec.Kind, rec.ID)
	}
	if cur, err := instance.Load(dir, rec.Kind); err == nil && cur.Stopped {
		return stoppedError(cur)
	}
	if err := m.stopLocked(ctx, dir); err != nil {
		return err
	}
	if steps.Fresh != nil {
		if err := steps.Fresh(ctx); err != nil {
			return err
		}
	}
	if _, err := m.startLocked(ctx, dir, rec); err != nil {
		return err
	}
	if steps.Restore == nil {
		return nil
	}
	agent := supervisor.NewClient(dir).Agent()
	defer agent.Close()
	if err := m.updateLocked(dir, rec.Kind, func(r *instance.Record) error { return steps.Restore(ctx, agent, r) }); err != nil {
		return err
	}
	instance.AppendEvent(dir, "reset", nil)
	return nil
}

// Reaped is one instance Reap removed.
type Reaped struct {
	ID         string
	PriorState string
}

// List returns the records of every instance of kind, oldest first.
func (m *Manager) List(kind string) ([]vmdir.Dir, []instance.Record, error) {
	ents, err := os.ReadDir(m.Parent(kind))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	type item struct {
		dir vmdir.Dir
		rec instance.Record
	}
	var items []item
	for _, e := range ents {
		if !e.IsDir() || vmdir.IsHidden(e.Name()) {
			continue
		}
		dir, rec, err := m.Open(kind, e.Name())
		if err != nil {
			continue // deleted meanwhile, a run, or not an instance
		}
		items = append(items, item{dir, rec})
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].rec.CreatedAt.Before(items[j].rec.CreatedAt) })
	dirs := make([]vmdir.Dir, len(items))
	recs := make([]instance.Record, len(items))
	for i, it := range items {
		dirs[i], recs[i] = it.dir, it.rec
	}
	return dirs, recs, nil
}

// Reap deletes the instances of kind whose TTL passed and those whose
// supervisor is gone without a clean stop (broken), then whatever the
// reconcile pass finds. A supervisor that is alive but did not answer in
// time is not gone: on a loaded host it is busy (waitRunning waits for it
// too), so reap leaves it; delete removes it.
func (m *Manager) Reap(ctx context.Context, kind string) ([]Reaped, error) {
	dirs, recs, err := m.List(kind)
	if err != nil {
		return nil, err
	}
	out := []Reaped{}
	for i, dir := range dirs {
		st := supervisor.Observe(ctx, dir, recs[i])
		if st.State != instance.Expired && st.State != instance.Broken || st.Cause == instance.CauseSupervisorSilent {
			continue
		}
		if _, err := m.Delete(ctx, dir, recs[i]); err != nil {
			return out, err
		}
		m.log.Info("reaped", "kind", kind, "id", recs[i].ID, "state", st.State, "cause", string(st.Cause))
		out = append(out, Reaped{ID: recs[i].ID, PriorState: st.State})
	}
	m.sweep(ctx, time.Now().Add(reconcileBudget), &ReconcileReport{})
	return out, nil
}
