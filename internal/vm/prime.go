package vm

import (
	"context"
	"fmt"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// snapshotPrimeShell is what a snapshot's guest runs before it is saved:
// a shell string (as `pyro run ENV -- cmd` sends one word) that also
// forks and execs a program.
const snapshotPrimeShell = "true; /bin/true"

// primeSnapshotGuest runs one command in a guest about to be saved as a
// golden snapshot, so that what every restored guest's first command
// needs is in the saved memory instead of being done again after each
// restore: the shell, ld.so, libc and /bin/true read from the root disk
// into the guest's page cache (under TCG each block read after a restore
// runs the guest's block and virtio paths, translated afresh), the
// agent's exec path (user cgroup, pipes) set up once. The command is
// pyro's own, runs before any user exists, writes no file, and every
// restored guest gets a fresh RNG state, clock, hostname and machine-id
// after it (refreshIdentity).
//
// A guest with /workspace mounted (warm_mounted.go) runs it there, as a
// workspace's commands run: the overlay's lookups are cached too.
func primeSnapshotGuest(ctx context.Context, g *VM, inWorkspace bool) error {
	cwd := "/"
	if inWorkspace {
		cwd = "/workspace"
	}
	res, err := g.Agent.Exec(ctx, agentapi.ExecRequest{Shell: snapshotPrimeShell, Cwd: cwd, TimeoutMS: 30_000}, nil)
	if err != nil {
		return fmt.Errorf("prime the snapshot's guest: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("prime the snapshot's guest: %q exited %d", snapshotPrimeShell, res.ExitCode)
	}
	return nil
}
