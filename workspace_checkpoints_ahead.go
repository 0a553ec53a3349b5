package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Freezing ahead: the layer switch of a quiet checkpoint (the live top put
// under the next overlay, workspace_checkpoints_quiet.go) is made by the
// housekeeping right after the exec that reported quiet, not by the next
// exec before its command starts. That exec then finds the live top empty
// and names the layer below it (the top_empty step, no QEMU call): on its
// path are only the lock, the pending report and the record. Measured
// before (TCG, load 1-5): naming the top and QEMU's switch took 2-10 ms of
// each exec after a writing one.
//
// Why the layer frozen ahead is the state before the next command: it is
// used only by a quiet exec the guest accepts, and the guest accepts one
// only while it is still at the epoch of the report (nothing ran, nothing
// was written since the synced, quiet state the report describes). A
// layer frozen later than that state (another client's call wrote
// meanwhile) is therefore never named: that call moved the epoch on, the
// quiet exec is refused and its checkpoint taken the usual way. Writes
// after the freeze land in the new top, which is then not empty, and the
// exec freezes it on its path as before (and is refused the same way).
//
// Kill -9 of any process at any point: the switch is pushTop's, whose
// record of the next overlay marks it until it is done (resolveTop); the
// frozen layer is in the live chain, so nothing deletes it; the note in
// the pending report (which layer, its bytes) is a hint: without it the
// checkpoint names the same layer and counts no bytes for it.

// freezeAhead freezes the live top when a quiet report is pending and the
// top holds writes; pushed says it did, clean that the top needs no flush
// (frozen ahead, or nothing written to it since it was made: an exec that
// wrote nothing leaves QEMU nothing to flush, and the HMP flush the
// housekeeping would ask for costs QEMU's main loop 2-5 ms after every
// such exec). The caller holds the layer lock.
func freezeAhead(ctx context.Context, dir vmdir.Dir, l workspace.Layers, t *phases) (pushed, clean bool, err error) {
	cps := checkpointsOf(dir)
	top, err := resolveTop(ctx, dir, l)
	if err != nil {
		return false, false, err
	}
	if _, empty := l.EmptyTop(top); empty {
		// Empty on the disk: QEMU's cached tables may still hold a
		// write the guest has not flushed (a command still running),
		// which only a pending quiet report rules out.
		return false, cps.HasPending(), nil
	}
	if !cps.HasPending() {
		return false, false, nil
	}
	ref, bytes, err := pushTop(ctx, dir, l, t)
	if err != nil {
		return false, false, err
	}
	return true, true, cps.SetFrozenAhead(ref, bytes)
}
