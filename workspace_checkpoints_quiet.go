package pyro

import (
	"context"
	"errors"
	"fmt"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A checkpoint before an exec without a guest round trip (each costs
// ~10 ms of the guest's emulated CPU). After every exec of a workspace
// that takes checkpoints the guest is asked for a quiet report
// (agentapi/quiet.go): the command over, /workspace synced, no user
// process left, no call under way, and the upper layer's listing. The
// report is asked for after the exec's answer, by the housekeeping the
// caller hands to the supervisor (keepQuiet, under the layer lock): the
// guest's listing and the host's records of it cost the caller nothing
// (measured before: the report was in the exec's stream, 3-18 ms of
// QEMU's CPU and 2-4 ms of the caller's on every writing exec). The next exec's
// checkpoint then comes from the disk alone: the live top goes under a new
// overlay over QMP (or, when nothing was written to it since it was made,
// the checkpoint names its parent and QEMU is not even asked), and the
// command runs only if the guest is still as reported; else nothing ran,
// the checkpoint is dropped and taken the usual way.
//
// Why no freeze: the guest synced /workspace and nothing has run since, so
// its disk holds the state exactly. A block-level copy of a journaled ext4
// taken at any instant (blockdev-snapshot drains in-flight requests first)
// is what a power cut would leave; the frozen layer is only ever mounted
// by a guest again (undo, reset to it), which replays the journal, and the
// host's own readers refuse an image that needs recovery
// (DiskView.Clean). Named snapshots, which host tools read, still freeze.
//
// Why nothing wrote between the report and the switch: /workspace changes
// only through the agent's calls and user processes. The report is sent
// only with no user process left in the user cgroup (services and shells
// live there too: a running service means no report, so every exec of a
// workspace with a service takes the frozen checkpoint) and no call under
// way (the agent waits, bounded, for the exec it follows to finish, then
// syncs /workspace: a process that wrote after the exec's own sync and
// has exited since left nothing unsynced); the report is a GET, which
// moves no epoch; every call that may change the guest moves it on, and
// the quiet exec runs only at the reported epoch with nothing under way
// and no user process (the agent checks all three under one lock before it
// starts the command). So if the command runs, nothing ran between the
// report and the checkpoint, whatever the host did meanwhile; if anything
// did, the command does not run and the checkpoint goes.
//
// The listing in the report: the first report lists the upper layer whole;
// after it the guest says only what changed since the listing the host
// holds (PathQuiet's have and delta; agent/quiet_track.go: fanotify on the upper
// disk and on the overlay names the paths, the guest lstats only those),
// and the host applies that to its pending listing
// (workspace.ApplyDelta, bounded like a whole listing). The listing only
// shapes the checkpoint's manifest (diff --since, bytes changed): the
// checkpoint itself is the frozen layer, so a guest that lies in a delta
// makes its own listings wrong and nothing else. A delta names the
// listing it applies to (Base); against any other the host forgets the
// pending report and the next checkpoint asks the guest; anything the
// guest cannot account for (queue overflow, an unmounted upper disk)
// makes its next report a whole listing again.
//
// Cost (the exec after a writing exec): the next overlay was made and
// handed to QEMU after the command before ended, by the supervisor
// (workspace_chain.go stageNext, workspace_checkpoints_tidy.go), so the
// checkpoint is one QMP switch (blockdev-snapshot; the housekeeping
// flushed the live top ahead, so QEMU has nothing to flush first), a
// rename of the top and the checkpoint's records, whose fsync runs beside
// the command; dropping and merging old layers, and folding the listing's
// delta, run after the command too. Kill -9 of any process
// at any point: before the top is renamed nothing changed; between the
// rename and QEMU's switch the record of the next overlay marks the switch
// (resolveTop asks QEMU which layer it writes before anything trusts the
// top; a QEMU that died boots on the named chain, whose new top is empty);
// after the switch and before the record the old top is frozen and the
// pending report stands, so the next exec names that layer again; a
// command that ran and was not reported makes the next quiet exec be
// refused (the epoch moved), so its checkpoint is taken the usual way.
//
// The answer before the report: an exec's caller answers once the command
// ended and the guest synced /workspace (every exec does, before its exit
// event), and only then asks for the tidy. What the answer stands on is on
// the disk and in the checkpoint taken before the command, whose record
// was written (and synced) before the answer; the report written after it
// is a hint for the next checkpoint, never a record. So kill -9 after the
// answer: of QEMU, the disk holds the command's result (synced), the
// guest boots on the named chain, and the pending report, worthless to a
// new agent (its epochs start afresh), costs one usual checkpoint; of the
// supervisor or the caller before the report is kept, the report kept is
// the one before the command (or none), whose epoch the command moved on,
// so the next quiet exec is refused before it runs, its checkpoint
// dropped and taken the usual way (a freeze with the guest's own listing):
// a correct record either way, and undo and diff --since stay exact. A
// next exec that comes while the tidy is asking waits for it (the layer
// lock); one that comes before the tidy took the lock uses the report
// before, and is refused the same way. (TestQuietReportAfterAnswer.)

// execCheckpointed runs an exec in a workspace, with its checkpoint first
// when it takes them; agent is closed. The housekeeping after the
// checkpoint, and the guest's quiet report for the next one, come after
// the command's answer (tidyAfterExec).
func (c *Client) execCheckpointed(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, opts ExecOptions) (ExecResult, error) {
	if !checkpointsOn(rec) {
		// Timed too, for the comparison with a checkpointed exec.
		t := newPhases(c.logger, "exec")
		defer t.done("workspace", rec.ID)
		r, err := execIn(ctx, agent, opts, t)
		t.mark("exec")
		return r, err
	}
	defer agent.Close()
	req, err := opts.execRequest()
	if err != nil {
		return ExecResult{}, err
	}
	what := commandLabel(opts.Command)
	quiet := chainable(dir)
	t := newPhases(c.logger, "checkpointed exec")
	defer t.done("workspace", rec.ID)
	req.Timings = t != nil
	var after *agentapi.Client // the tidy asks the guest for its report
	if quiet {
		after = agent
		n, expect, durable, ok, err := c.checkpointQuiet(ctx, dir, rec, what, t)
		if err != nil {
			return ExecResult{}, err
		}
		if ok {
			// The record's sync overlaps the command (the order kill -9
			// needs is kept: the record is written before it runs), and
			// so does the dial of the tidy request after it.
			synced := make(chan error, 1)
			go func() { synced <- durable() }()
			sup := supervisor.DialAhead(dir)
			defer sup.Close()
			r, ran, err := agent.ExecQuiet(ctx, req, expect, opts.OnOutput)
			t.mark("exec")
			t.guest(r.Timings)
			if serr := <-synced; serr != nil && c.logger != nil {
				c.logger.Debug("sync a checkpoint's record", "err", serr)
			}
			t.mark("record_synced")
			if ran {
				c.tidyAfterExecWith(ctx, sup, dir, rec, after)
				t.mark("tidy_request")
				if err != nil {
					return ExecResult{}, err
				}
				return execResultFrom(r), nil
			}
			// Refused before anything ran: the guest changed since
			// its report, so the checkpoint may miss that change.
			// Only that one goes: an exec that ran meanwhile took
			// its own checkpoint after it.
			c.dropCheckpoint(dir, n)
		}
	}
	if err := c.takeCheckpoint(ctx, dir, rec, agent, what); err != nil {
		return ExecResult{}, err
	}
	r, err := agent.Exec(ctx, req, opts.OnOutput)
	t.guest(r.Timings)
	c.tidyAfterExec(ctx, dir, rec, after)
	if err != nil {
		return ExecResult{}, err
	}
	return execResultFrom(r), nil
}

// dropCheckpoint removes checkpoint n under the layer lock.
func (c *Client) dropCheckpoint(dir vmdir.Dir, n int) {
	unlock, err := lockLayersForHousekeeping(context.Background(), dir)
	if err != nil {
		return
	}
	defer unlock()
	checkpointsOf(dir).Drop(n)
}

// keepQuiet asks the guest for its quiet report and keeps it for the next
// checkpoint; a guest that is not quiet, or does not answer (an agent
// that predates the call), clears it, and the next checkpoint asks the
// guest. The caller (the housekeeping after an exec) holds the layer
// lock, so the next checkpoint waits for the report rather than use the
// one before it (which the guest would refuse).
func keepQuiet(ctx context.Context, cps workspace.Checkpoints, agent *agentapi.Client) error {
	rep, err := agent.Quiet(ctx, cps.PendingManifest())
	if err != nil {
		rep = nil
		err = fmt.Errorf("quiet report: %w", err)
	}
	return errors.Join(err, cps.SavePending(rep))
}

// checkpointQuiet takes the checkpoint before an exec from the pending
// quiet report: ok is false when there is none. It returns the
// checkpoint's number and the epoch the guest must still be at.
func (c *Client) checkpointQuiet(ctx context.Context, dir vmdir.Dir, rec instance.Record, what string, t *phases) (n int, expect uint64, durable func() error, ok bool, err error) {
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		return 0, 0, nil, false, err
	}
	defer unlock()
	t.mark("lock")
	cps := checkpointsOf(dir)
	expect, manifest, ok := cps.TakePending()
	if !ok {
		return 0, 0, nil, false, nil
	}
	l := layersOf(dir, rec)
	top, err := resolveTop(ctx, dir, l)
	if err != nil {
		return 0, 0, nil, false, fmt.Errorf("checkpoint: %w", err)
	}
	var ref workspace.LayerRef
	var bytes int64
	if parent, empty := l.EmptyTop(top); empty {
		// Nothing reached the disk since the top was made: the state is
		// its parent's, already frozen (by the checkpoint before, or
		// by the housekeeping after the last exec: then this
		// checkpoint counts its bytes, workspace_checkpoints_ahead.go).
		ref, _, err = l.Ref(parent)
		if fr, fb, ok := cps.FrozenAhead(); ok && err == nil && fr == ref {
			bytes = fb
		}
		t.mark("top_empty")
	} else {
		t.mark("top_written")
		ref, bytes, err = pushTop(ctx, dir, l, t)
		t.mark("switch")
	}
	if err != nil {
		return 0, 0, nil, false, fmt.Errorf("checkpoint: %w", err)
	}
	cp, durable, err := cps.TakeLayerListed(ref, bytes, manifest, instance.Redactor(dir).String(what))
	t.mark("record")
	if err != nil {
		return 0, 0, nil, false, fmt.Errorf("checkpoint: %w", err)
	}
	return cp.Number, expect, durable, true, nil
}
