package lifecycle

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// WhileStopped runs f under the instance's lock when no supervisor (and so
// no guest) runs for it, so f may read the instance's disk images on the
// host: nothing can start the guest meanwhile. A running instance is
// failed_precondition with a hint to stop it.
func (m *Manager) WhileStopped(ctx context.Context, dir vmdir.Dir, rec instance.Record, f func() error) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	if _, alive := instance.SupervisorPid(dir); alive {
		st := supervisor.Observe(ctx, dir, rec)
		return errdefs.New(errdefs.ErrFailedPrecondition, "stop it first with `pyro "+rec.Kind+" stop "+rec.ID+"`",
			"%s %q is %s: disk tools read a stopped %s's image", rec.Kind, rec.ID, st.State, rec.Kind)
	}
	return f()
}
