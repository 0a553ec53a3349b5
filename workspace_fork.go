package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Live fork (issue #14): ForkWorkspace saves a running workspace whole
// (RAM, devices, and its upper layer at the same instant, the source
// paused for the save and the layer copy), then starts N
// new workspaces restored from that state. Each continues from that
// instant: the same files, the same running services, shells and
// background jobs (processes, not just files), with its own identity
// (RNG reseeded, clock, hostname, machine-id, MAC), network stack and
// disk (its own copy of the frozen upper layer over the shared read-only
// baseline). Not inherited: published ports (a host port belongs to one
// workspace), named snapshots and checkpoints, network connections in
// flight. A source with secrets is forked only when the caller says so
// (WithSecrets): they are in the running guest's memory.

// forkGateName is the fork gate's socket in the staging directory.
const forkGateName = "gate.sock"

// MaxForkCount bounds the forks of one call.
const MaxForkCount = 16

// forkParallel bounds the forks restoring at once: one per host core (at
// least two). Each restore is CPU bound on TCG (~0.9 s of a core: loading
// the state, then translating the guest's code again), and more restores
// than cores only compete. Measured here (2 cores, TCG, load 3-5 from
// other work), 10 forks of debian:12: 14.0 s one at a time, 5.0 s two at
// a time, 8.2 s four at a time.
var forkParallel = max(2, runtime.NumCPU())

// ForkWorkspaceOptions describe a fork.
type ForkWorkspaceOptions struct {
	// Count is the number of forks, 1 to MaxForkCount (0 means 1).
	Count int
	// Name names the fork; with Count > 1 the forks are NAME-1..NAME-N.
	Name string
	// WithSecrets must be set to fork a workspace that has secrets.
	WithSecrets bool
}

// ForkedWorkspace is one fork and what it inherited from the source.
type ForkedWorkspace struct {
	Workspace
	// InheritedServices and InheritedShells name the services and shell
	// ids running in the fork, carried over from the source.
	InheritedServices []string `json:"inherited_services"`
	InheritedShells   []string `json:"inherited_shells"`
}

// ForkResult says what a fork made.
type ForkResult struct {
	SourceWorkspaceID string            `json:"source_workspace_id"`
	Forks             []ForkedWorkspace `json:"forks"`
	// SourcePausedMS is how long the source was paused; SaveMS how long
	// saving it took (it ran meanwhile); DurationMS the whole call.
	SourcePausedMS int64 `json:"source_paused_ms"`
	SaveMS         int64 `json:"save_ms"`
	DurationMS     int64 `json:"duration_ms"`
	StateBytes     int64 `json:"state_bytes"`
	// NotInherited names what the forks do not get from the source.
	NotInherited []string `json:"not_inherited"`
}

// forkNotInherited is ForkResult.NotInherited.
var forkNotInherited = []string{
	"published ports (publish them again in the fork)",
	"named snapshots and checkpoints",
	"network connections open in the source",
}

func forkNames(o ForkWorkspaceOptions) ([]string, error) {
	if o.Count == 0 {
		o.Count = 1
	}
	if o.Count < 1 || o.Count > MaxForkCount {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use 1 to %d", MaxForkCount), "fork count %d out of range", o.Count)
	}
	names := make([]string, o.Count)
	for i := range names {
		switch {
		case o.Name == "":
		case o.Count == 1:
			names[i] = o.Name
		default:
			names[i] = o.Name + "-" + strconv.Itoa(i+1)
		}
		if names[i] != "" {
			if err := ValidateWorkspaceName(names[i]); err != nil {
				return nil, err
			}
		}
	}
	return names, nil
}

// ForkWorkspace forks a running workspace Count ways (see above). The
// source keeps running; on failure no fork is left.
func (c *Client) ForkWorkspace(ctx context.Context, id string, opts ForkWorkspaceOptions) (ForkResult, error) {
	start := time.Now()
	names, err := forkNames(opts)
	if err != nil {
		return ForkResult{}, err
	}
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return ForkResult{}, err
	}
	m := metaOf(rec)
	if len(m.Secrets) > 0 && !opts.WithSecrets {
		return ForkResult{}, errdefs.New(errdefs.ErrFailedPrecondition,
			"pass --with-secrets (with_secrets) to give the forks the same secrets: they live in the running guest",
			"workspace %q has secrets", rec.ID)
	}
	if !layered(rec) {
		return ForkResult{}, errdefs.New(errdefs.ErrFailedPrecondition, "fork workspaces created without --allow-host-compat",
			"workspace %q keeps /workspace on one disk (host-compat layout); only layered workspaces can be forked", rec.ID)
	}
	for _, n := range names {
		if n != "" {
			if err := c.checkNameFree(n, ""); err != nil {
				return ForkResult{}, err
			}
		}
	}
	// A pivot a killed running host push left under way may name a top
	// QEMU never switched to (workspace_hostpush_running.go): the forks'
	// copy of the upper layer (internal/supervisor/fork.go reads the named
	// top) must be the layer the guest writes, whose blocks the saved RAM
	// caches, so it is settled first.
	if chainable(dir) {
		unlock, err := lockLayers(ctx, dir)
		if err != nil {
			return ForkResult{}, err
		}
		err = settlePivot(ctx, dir, layersOf(dir, rec))
		unlock()
		if err != nil {
			return ForkResult{}, fmt.Errorf("settle a host push's disk switch: %w", err)
		}
	}
	out := ForkResult{SourceWorkspaceID: rec.ID, Forks: []ForkedWorkspace{}, NotInherited: forkNotInherited}
	var made []vmdir.Dir
	var recs []instance.Record
	err = c.lc.Fork(ctx, dir, rec, func(ctx context.Context, saved lifecycle.Saved) error {
		out.SourcePausedMS, out.SaveMS, out.StateBytes = saved.PausedMS, saved.SaveMS, saved.StateBytes
		c.logger.Debug("fork saved", "ms", time.Since(start).Milliseconds())
		// Each fork starts as soon as it is made, and is asked what it
		// inherited as soon as it runs: the host's work for one fork
		// overlaps the restores of the others (restores are CPU bound,
		// making a fork's directory is file work).
		// The forks map the saved RAM instead of each reading it
		// (internal/vm/forkram.go); when the state cannot be split they
		// read it as saved. The split runs while the forks' directories
		// are made (file work); each fork's plan waits for it.
		var ram *vm.ForkRAM
		var splitErr error
		splitDone := make(chan struct{})
		go func() {
			defer close(splitDone)
			t := time.Now()
			ram, splitErr = vm.SplitForkRAM(saved.State, int64(rec.MemMiB)<<20)
			c.logger.Debug("fork ram split", "ms", time.Since(t).Milliseconds(), "at_ms", time.Since(start).Milliseconds(), "err", splitErr)
		}()
		defer func() {
			<-splitDone
			if ram != nil {
				ram.Close() // every fork's QEMU has its own hold of it now
			}
		}()
		planOf := sync.OnceValues(func() ([]byte, error) {
			<-splitDone
			src := saved.ForkSource
			if splitErr == nil {
				src.State, src.RAM, src.RAMInode = ram.State, ram.Path(), ram.Inode()
			}
			return json.Marshal(src)
		})
		forks := make([]ForkedWorkspace, len(names))
		errs := make([]error, len(names))
		slots := make(chan struct{}, forkParallel)
		// Two-phase restore (internal/vm/forkgate.go): every fork loads
		// its state and waits paused at the gate until all have, then
		// they run forkParallel at a time. Held forks hold no slot (they
		// would wait for each other: the gate keeps the count); without
		// a gate, forkParallel restore at a time.
		gate, gerr := vm.OpenForkGate(filepath.Join(filepath.Dir(saved.State), forkGateName), len(names), forkParallel)
		if gerr == nil {
			defer gate.Close()
			saved.Gate = gate.Path()
			slots = make(chan struct{}, len(names))
		} else {
			c.logger.Debug("fork gate", "err", gerr)
		}
		// Each fork is made with a plan that restores the state as saved
		// (RAM included): no fork is ever visible without one (makeForks).
		plan0, err := json.Marshal(saved.ForkSource)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		made, recs, err = c.makeForks(ctx, dir, rec, names, opts.WithSecrets, saved.Disk, plan0, func(i int, d vmdir.Dir, r instance.Record, synced <-chan error) {
			wg.Go(func() {
				forks[i], errs[i] = c.startFork(ctx, slots, d, r, synced, gate, planOf)
			})
		})
		if gate != nil && err != nil {
			for range len(names) - len(made) {
				gate.Done() // never made: the others are not held for it
			}
		}
		wg.Wait()
		if gate != nil {
			at, arrived, _ := gate.Loaded()
			c.logger.Debug("fork gate full", "ms", at.Sub(start).Milliseconds(), "arrived", arrived)
		}
		c.logger.Debug("forks running", "ms", time.Since(start).Milliseconds(), "err", err)
		if err != nil {
			return err
		}
		out.Forks, err = collectForks(len(made), func(i int) (ForkedWorkspace, error) { return forks[i], errs[i] })
		return err
	})
	if err != nil {
		for i, d := range made {
			_, _ = c.lc.Delete(context.WithoutCancel(ctx), d, recs[i])
		}
		return ForkResult{}, err
	}
	out.DurationMS = time.Since(start).Milliseconds()
	return out, nil
}

// collectForks gathers what each of n forks inherited (inherited(i), all
// at once). It returns every fork's entry, or an error and none: never a
// list with holes where a start or an answer failed.
func collectForks(n int, inherited func(i int) (ForkedWorkspace, error)) ([]ForkedWorkspace, error) {
	forks := make([]ForkedWorkspace, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { forks[i], errs[i] = inherited(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return forks, nil
}

// forkInherited is the status of the running fork in d, observed as st
// when it started, and the services and shells it inherited. Its guest
// told them in its identity call (st.Inherited): the fork's status costs
// no call to its agent. From an agent that does not tell them (a source
// started by an older pyro) they are asked for.
func (c *Client) forkInherited(ctx context.Context, d vmdir.Dir, rec instance.Record, st lifecycle.Status) (ForkedWorkspace, error) {
	fw := ForkedWorkspace{InheritedServices: []string{}, InheritedShells: []string{}}
	in := st.Inherited
	if in == nil {
		agent := c.lc.Client(d)
		defer agent.Close()
		in = &agentapi.Inherited{}
		in.Services, _ = agent.ListServices(ctx)
		in.Shells, _ = agent.ListShells(ctx)
		in.Jobs, _ = agent.ListJobs(ctx)
	}
	fw.Workspace = c.workspaceStatus(ctx, d, rec, st, in)
	for _, s := range in.Services {
		fw.InheritedServices = append(fw.InheritedServices, s.Name)
	}
	for _, s := range in.Shells {
		fw.InheritedShells = append(fw.InheritedShells, s.ShellID)
	}
	return fw, nil
}

// makeForks creates the forks' directories and records, and calls each
// with each fork as soon as it is whole (the caller writes its plan and
// starts it): each gets
// its own copy of the saved upper layer, the source's baseline (a hard
// link: it is never written), its baseline record, history and, when
// asked, secrets. The disk copy is
// made in the kernel and synced in the background: synced says when it
// is durable (the fork is not handed out before).
func (c *Client) makeForks(ctx context.Context, src vmdir.Dir, srcRec instance.Record, names []string, withSecrets bool, disk string, plan []byte, each func(i int, d vmdir.Dir, rec instance.Record, synced <-chan error)) (made []vmdir.Dir, recs []instance.Record, err error) {
	unlock, err := c.lockNames(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	sm := metaOf(srcRec)
	for _, name := range names {
		t := time.Now()
		if name != "" {
			if err := c.checkNameFree(name, ""); err != nil {
				return made, recs, err
			}
		}
		rec := srcRec
		rec.ID, rec.CreatedAt, rec.Stopped = vmdir.NewID(), time.Now().UTC(), false
		if rec.TTLSeconds > 0 {
			exp := rec.CreatedAt.Add(time.Duration(rec.TTLSeconds) * time.Second)
			rec.ExpiresAt = &exp
		}
		m := workspaceMeta{Seed: sm.Seed, Secrets: []SecretInfo{}, Name: name, Labels: sm.Labels, Checkpoints: sm.Checkpoints}
		if withSecrets {
			m.Secrets = sm.Secrets
		}
		synced := make(chan error, 1)
		dir, rec, err := c.lc.Create(ctx, rec, func(dir vmdir.Dir, rec *instance.Record) error {
			// Half-made until it runs: a killed fork is reconciled away.
			if err := instance.WriteCreator(dir); err != nil {
				return err
			}
			rec.WorkspaceDisk, rec.WorkspaceBase = dir.Path(workspace.DiskFile), dir.Path(workspace.BaseFile)
			if err := workspace.CopyFreshDisk(disk, rec.WorkspaceDisk); err != nil {
				return fmt.Errorf("copy the workspace disk: %w", err)
			}
			go func(disk string) { synced <- workspace.SyncFile(disk) }(rec.WorkspaceDisk)
			if err := linkOrCopy(srcRec.WorkspaceBase, rec.WorkspaceBase); err != nil {
				return err
			}
			for _, f := range []string{filepath.Join(workspace.SnapshotsDir, workspace.Baseline+".json"), workspace.HistoryFile} {
				if err := copySmall(src.Path(f), dir.Path(f)); err != nil {
					return err
				}
			}
			if withSecrets {
				if err := copySmall(src.Path(workspace.SecretsFile), dir.Path(workspace.SecretsFile)); err != nil {
					return err
				}
			}
			// The plan is written before the record makes the fork
			// visible: a fork without one reads as an ordinary stopped
			// workspace (a host push would write its disk under the
			// memory state its first boot restores; a start would boot
			// it cold, and the plan written after would make a later
			// boot restore a state long gone). startFork replaces it
			// with the plan that maps the split RAM.
			if err := fsutil.WriteFileAtomic(dir.Path(supervisor.ForkFile), plan, 0o600); err != nil {
				return err
			}
			setMeta(rec, m)
			return nil
		})
		if err != nil {
			return made, recs, fmt.Errorf("create fork: %w", err)
		}
		c.logger.Debug("fork made", "id", rec.ID, "ms", time.Since(t).Milliseconds())
		each(len(made), dir, rec, synced)
		made, recs = append(made, dir), append(recs, rec)
	}
	return made, recs, nil
}

// startFork starts the made fork d once one of slots is free (restores
// run forkParallel at a time), marks it complete once it runs and its
// disk is synced, and asks it what it inherited after giving the slot
// back, so that the question overlaps the next fork's restore.
func (c *Client) startFork(ctx context.Context, slots chan struct{}, d vmdir.Dir, rec instance.Record, synced <-chan error, gate *vm.ForkGate, planOf func() ([]byte, error)) (ForkedWorkspace, error) {
	done := func() {}
	if gate != nil {
		done = sync.OnceFunc(gate.Done) // the next held fork may run
	}
	defer done()
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return ForkedWorkspace{}, fmt.Errorf("start fork %s: %w", rec.ID, ctx.Err())
	}
	// The plan (supervisor.ForkFile) makes the fork's first boot a
	// restore of the saved state; until it is written the fork is only
	// half made (reconciled away if this process dies).
	plan, err := planOf()
	if err == nil {
		// Replaced only while it is there: a concurrent start that booted
		// the fork removed it, and a plan written again would make the
		// fork's next boot restore a state long gone.
		if _, serr := os.Lstat(d.Path(supervisor.ForkFile)); serr == nil {
			err = fsutil.WriteFileAtomic(d.Path(supervisor.ForkFile), plan, 0o600)
		}
	}
	if err != nil {
		<-slots
		return ForkedWorkspace{}, fmt.Errorf("start fork %s: %w", rec.ID, err)
	}
	t := time.Now()
	st, err := c.lc.Start(ctx, d, rec)
	<-slots
	done()
	c.logger.Debug("fork started", "id", rec.ID, "ms", time.Since(t).Milliseconds(), "err", err)
	if err != nil {
		return ForkedWorkspace{}, fmt.Errorf("start fork %s: %w", rec.ID, err)
	}
	select {
	case err = <-synced:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		return ForkedWorkspace{}, fmt.Errorf("sync fork %s's disk: %w", rec.ID, err)
	}
	if err := instance.DoneCreating(d); err != nil {
		return ForkedWorkspace{}, err
	}
	return c.forkInherited(ctx, d, rec, st)
}

// linkOrCopy hard-links a read-only image (copying it across filesystems).
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	_, _, err := workspace.CopyImage(src, dst, 0, "workspace baseline", "")
	return err
}

// copySmall copies a small private file when it exists.
func copySmall(src, dst string) error {
	b, err := os.ReadFile(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(dst, b, 0o600)
}
