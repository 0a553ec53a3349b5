package pyro

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/doctor"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/golden"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Warm starts (issue #14): guests are restored from a golden memory
// snapshot of their configuration instead of booted. Snapshots are built on
// first use; PrepareEnvironment builds one ahead.

// PrepareOptions choose the configuration to prepare; zero fields take the
// defaults of RunOptions.
type PrepareOptions struct {
	VCPUCount int
	MemMiB    int
	Network   bool
	// Workspace prepares the configuration of a workspace (a workspace
	// disk attached) instead of a run or VM.
	Workspace bool
}

// PrepareResult says which snapshot is ready.
type PrepareResult struct {
	Environment string         `json:"environment"`
	Snapshot    GoldenSnapshot `json:"snapshot"`
	DurationMS  int64          `json:"duration_ms"`
}

// GoldenSnapshot is one memory snapshot of an environment.
type GoldenSnapshot struct {
	ID         string    `json:"id"`
	Path       string    `json:"path"`
	VCPUCount  int       `json:"vcpu_count,omitempty"`
	MemMiB     int       `json:"mem_mib,omitempty"`
	Network    string    `json:"network,omitempty"`
	Workspace  bool      `json:"workspace"`
	Backend    string    `json:"backend,omitempty"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	StateBytes int64     `json:"state_bytes"` // guest RAM and device state, on disk
	// Problem says why it would not be used (it is then discarded and
	// rebuilt); empty when usable.
	Problem string `json:"problem,omitempty"`
}

func goldenFrom(in golden.Info) GoldenSnapshot {
	return GoldenSnapshot{ID: in.ID, Path: in.Dir, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB, Network: in.Network,
		Workspace: in.Workspace, Backend: in.Backend, CreatedAt: in.CreatedAt,
		StateBytes: in.StateBytes, Problem: in.Problem}
}

// PrepareEnvironment makes sure the golden memory snapshot for env and
// opts exists (`pyro prepare`, `pyro env pull --warm`), so the next start
// of that configuration is a restore. It builds one (a boot and a save)
// when it is missing or unusable.
func (c *Client) PrepareEnvironment(ctx context.Context, env string, opts PrepareOptions) (PrepareResult, error) {
	start := time.Now()
	if env == "" {
		env = DefaultEnvironment
	}
	if opts.VCPUCount == 0 {
		opts.VCPUCount = DefaultVCPUCount
	}
	if opts.MemMiB == 0 {
		opts.MemMiB = DefaultMemMiB
	}
	bin, err := c.agentBinary()
	if err != nil {
		return PrepareResult{}, err
	}
	cfg := vm.Config{Environment: env, VCPUs: opts.VCPUCount, MemMiB: opts.MemMiB, Network: opts.Network}
	if opts.Workspace {
		// The snapshot's guest sees a placeholder of a workspace disk's
		// size; it never reads it.
		tmp, err := os.MkdirTemp(c.dirs.Cache(), "prepare-")
		if err != nil {
			return PrepareResult{}, err
		}
		defer os.RemoveAll(tmp)
		cfg.WorkspaceDisk = filepath.Join(tmp, "disk.img")
		if err := os.WriteFile(cfg.WorkspaceDisk, nil, 0o600); err != nil {
			return PrepareResult{}, err
		}
		if err := os.Truncate(cfg.WorkspaceDisk, workspace.DiskBytes()); err != nil {
			return PrepareResult{}, err
		}
		// Workspaces on a VM are layered (workspace_layers.go): the
		// snapshot has a placeholder baseline disk too.
		cfg.WorkspaceBase = cfg.WorkspaceDisk
		cfg.TransferDisk = cfg.WorkspaceDisk // and a transfer disk (workspace_push.go)
	}
	deps := vm.Deps{Dirs: c.dirs, Envs: c.envs, Logger: c.logger, AgentBinary: bin}
	snap, err := vm.PrepareSnapshot(ctx, deps, cfg)
	if err == nil && opts.Workspace {
		// A new unseeded workspace restores a guest with /workspace
		// mounted; later starts (and seeded creates) the one above. The
		// result names the one a create uses.
		snap, err = vm.PrepareMountedSnapshot(ctx, deps, cfg)
	}
	if err != nil {
		return PrepareResult{}, errdefs.Wrap(errdefs.ErrUnavailable, err, "run `pyro doctor`", "prepare %s", env)
	}
	out := PrepareResult{Environment: env, DurationMS: time.Since(start).Milliseconds()}
	list, _ := golden.New(filepath.Dir(snap.Dir)).List()
	for _, in := range list {
		if in.Dir == snap.Dir {
			out.Snapshot = goldenFrom(in)
		}
	}
	return out, nil
}

// GoldenSnapshots lists the memory snapshots of an installed environment
// (none when it is not installed).
func (c *Client) GoldenSnapshots(env string) ([]GoldenSnapshot, error) {
	inst, err := c.envs.Get(env)
	if err != nil {
		return nil, nil
	}
	return listSnapshots(inst)
}

func listSnapshots(inst envstore.Installed) ([]GoldenSnapshot, error) {
	list, err := vm.SnapshotStore(inst.Dir).List()
	if err != nil {
		return nil, err
	}
	out := make([]GoldenSnapshot, 0, len(list))
	for _, in := range list {
		out = append(out, goldenFrom(in))
	}
	return out, nil
}

// pruneSnapshots removes every memory snapshot of the installed
// environments (a cache: the next start rebuilds what it needs).
func (c *Client) pruneSnapshots(res *PruneResult) error {
	sts, err := c.envs.List()
	if err != nil {
		return err
	}
	for _, st := range sts {
		if st.Dir == "" {
			continue
		}
		removed, err := vm.SnapshotStore(st.Dir).RemoveAll()
		for _, r := range removed {
			res.Removed = append(res.Removed, PrunedItem{Path: r.Path, Reason: r.Reason, Bytes: r.Bytes})
			res.FreedBytes += r.Bytes
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// snapshotCheck is doctor's line about memory snapshots: which exist, their
// sizes, and unusable ones (discarded and rebuilt on the next start).
func (c *Client) snapshotCheck() doctor.Check {
	sts, err := c.envs.List()
	if err != nil {
		return doctor.Check{Name: "memory snapshots", Status: doctor.Warn, Detail: err.Error()}
	}
	var parts []string
	bad := 0
	for _, st := range sts {
		if !st.Installed {
			continue
		}
		list, err := vm.SnapshotStore(st.Dir).List()
		if err != nil {
			continue
		}
		for _, in := range list {
			if in.Problem != "" {
				bad++
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %d vCPU %d MiB network=%s workspace=%t (%d MiB)",
				st.Entry.Name, in.VCPUCount, in.MemMiB, in.Network, in.Workspace, in.StateBytes>>20))
		}
	}
	ch := doctor.Check{Name: "memory snapshots", Status: doctor.OK}
	switch {
	case len(parts) == 0:
		ch.Detail = "none yet: the first start of each configuration builds one (or `pyro prepare ENV`)"
	default:
		ch.Detail = strings.Join(parts, "; ")
	}
	if bad > 0 {
		ch.Status, ch.Hint = doctor.Warn, "`pyro env prune` removes them; the next start rebuilds"
		ch.Detail += fmt.Sprintf("; %d unusable", bad)
	}
	return ch
}
