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
// (diffLayered). The guest is asked for them while the workspace's status
// is observed (a health call to the guest, as before every command),
// not after it: when the observation says it runs, what was asked
// meanwhile is the answer; otherwise that is dropped, and the workspace is
// started (or said to be stopped) as for any command and asked again.
func (c *Client) diffLayeredWorkspace(ctx context.Context, dir vmdir.Dir, rec instance.Record, opts workspace.DiffOptions) (WorkspaceDiff, error) {
	t := newPhases(c.logger, "diff")
	defer t.done("workspace", rec.ID)
	red := instance.Redactor(dir)
	type result struct {
		d   workspace.DiffResult
		err error
	}
	touchActivity(dir)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	early := make(chan result, 1)
	agent := c.lc.Client(dir)
	go func() {
		defer agent.Close()
		d, err := diffLayered(fctx, dir, agent, opts, nil)
		early <- result{d, err}
	}()
	var r result
	if st := c.lc.Observe(ctx, dir, rec); st.State == instance.Running {
		t.mark("observe")
		r = <-early
		t.mark("sides")
	} else {
		cancel()
		<-early
		agent, err := c.workspaceAgent(ctx, dir, rec)
		if err != nil {
			return WorkspaceDiff{}, err
		}
		defer agent.Close()
		t.mark("agent")
		r.d, r.err = diffLayered(ctx, dir, agent, opts, t)
	}
	if r.err != nil {
		return WorkspaceDiff{}, red.Error(fmt.Errorf("diff /workspace: %w", r.err))
	}
	r.d.Redact(red)
	t.mark("redact")
	return diffFrom(rec.ID, r.d), nil
}

// diffLayered compares /workspace with its baseline reading only the
// entries the upper layer changed, from both sides, under the same bounds
// as a whole-tree diff. Both sides are asked for at once, each into a
// private temporary file, capped like a snapshot (Diff reads the baseline
// side twice): the guest's second walk and stream overlap the host's
// reading of the first instead of following it, and neither stream waits
// on the other's reader (each is drained as it comes, so a large side
// never stalls the other past its idle bound). The two files share one
// cap (they lie on the host's disk at once: a guest streaming both sides
// to the cap would otherwise take twice a snapshot's bytes), and a side
// that fails stops the other.
func diffLayered(ctx context.Context, dir vmdir.Dir, agent *agentapi.Client, opts workspace.DiffOptions, t *phases) (workspace.DiffResult, error) {
	budget := hostres.NewBudget(hostres.Load().SnapshotBytes, "diff", hostres.SnapshotBytesEnv)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fetch := func(side string) (f *os.File, err error) {
		defer func() {
			if err != nil {
				cancel(err)
			}
		}()
		r, err := agent.LayerChanges(ctx, side)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		f, err = os.CreateTemp(string(dir), ".diff-"+side+"-*")
		if err != nil {
			return nil, err
		}
		// Unlinked at once: nothing is left behind by a process killed
		// mid-diff.
		_ = os.Remove(f.Name())
		if _, err := io.Copy(f, budget.Reader(r)); err != nil {
			f.Close()
			return nil, err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	var cur *os.File
	var cerr error
	merged := make(chan struct{})
	go func() {
		defer close(merged)
		cur, cerr = fetch(agentapi.SideMerged)
	}()
	base, err := fetch(agentapi.SideLower)
	t.mark("lower")
	<-merged
	t.mark("merged")
	for _, f := range []*os.File{base, cur} {
		if f != nil {
			defer f.Close()
		}
	}
	if err != nil || cerr != nil {
		// The side that failed first says why; the other was stopped.
		return workspace.DiffResult{}, context.Cause(ctx)
	}
	defer t.mark("compare")
	return workspace.Diff(base, cur, opts)
}
