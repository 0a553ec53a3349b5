package cli

import (
	"context"
	"fmt"

	"github.com/pyro-mcp/pyro"
)

// servePool starts the warm pool of `mcp serve --pool N` (vm_run's default
// configuration of env: 1 vCPU, 1024 MiB, no network), so the server's
// runs start in milliseconds. A pool that cannot start is a warning, not
// a failure: runs then start the usual way. The returned func closes it.
func (a *app) servePool(ctx context.Context, size int, env string) func() {
	return a.startServePool(ctx, pyro.PoolOptions{Environment: env, Size: size})
}

// serveWorkspacePool is servePool for `mcp serve --pool-workspace N`:
// workspace_create's default configuration (unseeded; workspace_pool.go).
// Workspaces it handed out outlive the server.
func (a *app) serveWorkspacePool(ctx context.Context, size int, env string) func() {
	return a.startServePool(ctx, pyro.PoolOptions{Environment: env, Size: size, Workspace: true})
}

func (a *app) startServePool(ctx context.Context, o pyro.PoolOptions) func() {
	if o.Size <= 0 {
		return func() {}
	}
	p, err := a.sdk.StartPool(ctx, o)
	if err != nil {
		// stderr: on stdio, stdout carries only the protocol.
		fmt.Fprintf(a.stderr, "pyro: warning: no warm pool: %v\n", err)
		return func() {}
	}
	return func() { _ = p.Close() }
}
