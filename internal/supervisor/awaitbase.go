package supervisor

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// awaitBase is the wait (vm.Config.AwaitBase) of a guest whose workspace
// baseline is still being built by the process creating the workspace
// (internal/workspace/basegate.go), nil when it is built. Should that
// process die first, the baseline is never whole: the boot fails, and
// reconcile removes the half-made workspace.
func awaitBase(d vmdir.Dir, base string) func(context.Context) error {
	if base == "" || !workspace.BasePending(base) {
		return nil
	}
	return func(ctx context.Context) error {
		return workspace.AwaitBase(ctx, base, func() bool {
			_, alive := instance.Creator(d)
			return alive
		})
	}
}
