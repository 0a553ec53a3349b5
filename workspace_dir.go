package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// setUpWorkspaceDir makes a new workspace directory's files inside
// lc.Create, the same for a create and a pool's fill: the creator first
// (half-made until the caller records it done: should this process be
// killed meanwhile, the next reconcile removes the workspace), the empty
// /workspace disk, and for a layered workspace its baseline image
// (buildBase; a seed's only prepared).
func (c *Client) setUpWorkspaceDir(ctx context.Context, dir vmdir.Dir, rec *instance.Record, layered, seeded bool) (baseDigest, error) {
	if err := instance.WriteCreator(dir); err != nil {
		return baseDigest{}, err
	}
	rec.WorkspaceDisk = dir.Path(workspace.DiskFile)
	emptyDisk := c.templates().EmptyDisk
	if layered && !seeded {
		// A fresh workspace (marked below): its first boot replaces
		// this disk with a mounted snapshot's when one matches, and
		// the supervisor makes whichever disk it booted on durable
		// before the create completes (workspace.TakeFresh); a crash
		// before that leaves the workspace half-made (the creator
		// mark), which reconcile removes. So the copy here is neither
		// hashed nor synced (~10 ms of every create).
		emptyDisk = c.templates().EmptyDiskUnsynced
	}
	if err := emptyDisk(ctx, rec.WorkspaceDisk, workspace.DiskBytes()); err != nil {
		return baseDigest{}, err
	}
	if !layered {
		return baseDigest{}, nil
	}
	base, err := c.buildBase(ctx, dir, rec, seeded)
	if err == nil && !seeded {
		// Both disks are the empty templates' bytes until the first boot
		// (internal/workspace/fresh.go).
		err = workspace.MarkFresh(string(dir), base.sum)
	}
	return base, err
}
