package lifecycle

import (
	"context"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Pooled workspaces (internal/supervisor/pooled.go): a warm pool makes a
// workspace directory of kind instance.KindPooled (the pool's process its
// creator), starts its supervisor with a link to the pool, primes the
// guest through the agent, pauses it, and later hands it to a claimer,
// which completes the record as an ordinary workspace.

// StartPooled spawns the supervisor of the pooled workspace in dir with its
// end of the pool's link and waits until its guest answers. On failure
// the caller discards the directory (DiscardPooled).
func (m *Manager) StartPooled(ctx context.Context, dir vmdir.Dir, rec instance.Record, link *os.File) (Status, error) {
	if rec.Kind != instance.KindPooled {
		return Status{}, errdefs.New(errdefs.ErrInvalidArgument, "", "%s %q is not pooled", rec.Kind, rec.ID)
	}
	if m.cfg.CheckEnvironment != nil {
		if err := m.cfg.CheckEnvironment(rec.Environment); err != nil {
			return Status{}, err
		}
	}
	bin, err := m.cfg.Binary()
	if err != nil {
		return Status{}, err
	}
	if err := supervisor.SpawnPooled(bin, dir, link); err != nil {
		return Status{}, err
	}
	return m.waitRunning(ctx, dir, rec, false)
}

// PausePooled pauses the primed guest of a pooled workspace.
func (m *Manager) PausePooled(ctx context.Context, dir vmdir.Dir) (Status, error) {
	return supervisor.NewClient(dir).PoolPause(ctx)
}

// ClaimPooled hands the pooled workspace in dir to the process claimer:
// it becomes the workspace's creator first (should it die before it
// completes the workspace, reconcile removes it, guest included), then the
// guest is resumed with a fresh identity.
func (m *Manager) ClaimPooled(ctx context.Context, dir vmdir.Dir, claimer int) (Status, error) {
	if err := instance.WriteCreatorPID(dir, claimer); err != nil {
		return Status{}, err
	}
	return supervisor.NewClient(dir).PoolClaim(ctx)
}

// discardWait bounds how long DiscardPooled lets a pooled supervisor end
// on its own (it stops a paused guest without a power-off: milliseconds).
const discardWait = 5 * time.Second

// DiscardPooled ends a pooled workspace that was never handed out (its
// supervisor ends on its own once the caller closed its link; this waits
// for that, then forces what is left) and removes its directory.
func (m *Manager) DiscardPooled(ctx context.Context, dir vmdir.Dir) error {
	if rec, err := instance.Load(dir, instance.KindPooled); err == nil && rec.Kind != instance.KindPooled {
		// Completed by a claimer: never the pool's to end.
		return nil
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discardWait)
	err := supervisor.WaitExit(wctx, dir)
	cancel()
	if err != nil {
		m.kill(ctx, dir)
	}
	return dir.Remove()
}
