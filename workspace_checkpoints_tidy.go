package pyro

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// The housekeeping after a checkpoint (checkpoints past the caps dropped,
// layers no state needs merged or deleted, the pending listing folded, the
// next overlay made ahead) runs after the step it preceded, in the
// workspace's supervisor (internal/supervisor/tidy.go): not beside the
// command, where its file syncs and QMP calls slowed the command down
// (measured: 30-100 ms of work per writing exec, half of it QMP and fsync,
// beside a 50-60 ms command), and not in the caller, which then returns
// at once. A supervisor that cannot (an older one) leaves it to the
// caller, which does it before it returns, as before.

func init() { supervisor.Tidy = tidyLayers }

// tidyLayers is the supervisor's side; agent is its own connection to the
// guest (nil when the guest is not running).
func tidyLayers(ctx context.Context, dir vmdir.Dir, rec instance.Record, req supervisor.TidyRequest, agent *agentapi.Client, log *slog.Logger) {
	count, bytes := workspace.CheckpointCaps()
	if req.MaxCount > 0 {
		count = req.MaxCount
	}
	if req.MaxBytes > 0 {
		bytes = req.MaxBytes
	}
	if !req.Quiet {
		agent = nil
	}
	housekeep(ctx, dir, rec, count, bytes, agent, log)
}

// tidyAfter has a chained workspace's layers tidied after a checkpointed
// step: by its supervisor in the background, else here.
func (c *Client) tidyAfter(ctx context.Context, dir vmdir.Dir, rec instance.Record) {
	c.tidyAfterExec(ctx, dir, rec, nil)
}

// tidyAfterExec is tidyAfter after an exec: with quiet (the exec's agent),
// the tidy first asks the guest for its quiet report and keeps it for the
// next checkpoint (workspace_checkpoints_quiet.go). The supervisor uses its
// own connection to the guest; quiet is used when the caller tidies.
func (c *Client) tidyAfterExec(ctx context.Context, dir vmdir.Dir, rec instance.Record, quiet *agentapi.Client) {
	sup := supervisor.NewClient(dir)
	defer sup.Close()
	c.tidyAfterExecWith(ctx, sup, dir, rec, quiet)
}

// tidyAfterExecWith is tidyAfterExec asking through sup (a quiet exec's
// client, dialled while its command ran).
func (c *Client) tidyAfterExecWith(ctx context.Context, sup *supervisor.Client, dir vmdir.Dir, rec instance.Record, quiet *agentapi.Client) {
	if !checkpointsOn(rec) || !chainable(dir) {
		return // nothing to tidy
	}
	count, bytes := workspace.CheckpointCaps()
	err := sup.Tidy(ctx, supervisor.TidyRequest{MaxCount: count, MaxBytes: bytes, Quiet: quiet != nil})
	if err == nil {
		return
	}
	if c.logger != nil {
		c.logger.Debug("the supervisor does not tidy layers: tidying here", "err", err)
	}
	housekeep(ctx, dir, rec, count, bytes, quiet, c.logger)
}

// flushTimeout bounds the flush of the live top (it holds the layer lock).
const flushTimeout = 30 * time.Second

// housekeep is the housekeeping itself, under the layer lock; the caps are
// the caller's. Each step is best effort: what one leaves undone the next
// housekeeping (or the checkpoint, for the next overlay) does. With an
// agent it first keeps the guest's quiet report (keepQuiet), so the freeze
// ahead finds it.
func housekeep(ctx context.Context, dir vmdir.Dir, rec instance.Record, maxCount int, maxBytes int64, agent *agentapi.Client, log *slog.Logger) {
	t := newPhases(log, "checkpoint housekeeping")
	var errs []error
	defer func() { t.done("err", errors.Join(errs...)) }()
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		errs = append(errs, err)
		return
	}
	defer unlock()
	t.mark("lock")
	cps := checkpointsOf(dir)
	if agent != nil {
		errs = append(errs, keepQuiet(ctx, cps, agent))
		t.mark("quiet_report")
	}
	cps.PruneTo(maxCount, maxBytes)
	t.mark("prune")
	errs = append(errs, gcLayers(ctx, dir, rec, maxCount))
	t.mark("gc")
	errs = append(errs, cps.FoldPending())
	t.mark("fold_listing")
	if chainable(dir) {
		l := layersOf(dir, rec)
		_, clean, err := freezeAhead(ctx, dir, l, t) // workspace_checkpoints_ahead.go
		errs = append(errs, err)
		t.mark("freeze_ahead")
		errs = append(errs, stageNext(ctx, dir, l, t))
		t.mark("stage_next")
		if !clean {
			// The live top written through: the next checkpoint's
			// switch, which flushes it first, then finds it clean
			// (qemu.FlushLive). A top frozen ahead was flushed by
			// its switch, and the new one holds nothing; an empty
			// top after a quiet exec holds nothing either.
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			errs = append(errs, qemuFlush(fctx, dir))
			cancel()
			t.mark("flush")
		}
	}
}
