package pyro

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// diffLayeredWorkspace is DiffWorkspace of a layered workspace: only the
// entries the upper layer changed are read, from both sides
// (diffLayered).
func (c *Client) diffLayeredWorkspace(ctx context.Context, dir vmdir.Dir, rec instance.Record, opts workspace.DiffOptions) (WorkspaceDiff, error) {
	t := newPhases(c.logger, "diff")
	defer t.done("workspace", rec.ID)
	red := instance.Redactor(dir)
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	defer agent.Close()
	t.mark("agent")
	d, err := diffLayered(ctx, dir, agent, opts, t)
	if err != nil {
		return WorkspaceDiff{}, red.Error(fmt.Errorf("diff /workspace: %w", err))
	}
	d.Redact(red)
	t.mark("redact")
	return diffFrom(rec.ID, d), nil
}

// diffLayered compares /workspace with its baseline reading only the
// entries the upper layer changed, from both sides, under the same bounds
// as a whole-tree diff.
func diffLayered(ctx context.Context, dir vmdir.Dir, agent *agentapi.Client, opts workspace.DiffOptions, t *phases) (workspace.DiffResult, error) {
	lower, err := agent.LayerChanges(ctx, agentapi.SideLower)
	if err != nil {
		return workspace.DiffResult{}, err
	}
	defer lower.Close()
	// The baseline side is read twice by Diff: it waits in a private
	// temporary file, capped like a snapshot.
	tmp, err := os.CreateTemp(string(dir), ".diff-base-*")
	if err != nil {
		return workspace.DiffResult{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	lim := hostres.Load()
	if _, err := io.Copy(tmp, hostres.CapReader(lower, lim.SnapshotBytes, "diff baseline", hostres.SnapshotBytesEnv)); err != nil {
		return workspace.DiffResult{}, err
	}
	t.mark("lower")
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return workspace.DiffResult{}, err
	}
	cur, err := agent.LayerChanges(ctx, agentapi.SideMerged)
	if err != nil {
		return workspace.DiffResult{}, err
	}
	defer cur.Close()
	t.mark("merged_open")
	defer t.mark("merged_compare")
	return workspace.Diff(tmp, hostres.CapReader(cur, lim.SnapshotBytes, "diff", hostres.SnapshotBytesEnv), opts)
}
