package pyro

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Sync push into a running workspace that takes checkpoints, on the host
// (issue #15; the MCP default). The push is written as for a quiet
// workspace without checkpoints (workspace_hostpush_running.go), and the
// layer the push replaces becomes the push's checkpoint:
//
//  1. the guest releases /workspace and lists its upper layer in the same
//     call, after the overlay is unmounted (nothing in the guest changes
//     the layer from then on) and before the upper disk is
//     (agentapi.ReleaseWorkspaceListed): the listing is exactly the state
//     the checkpoint keeps, which diff --since and bytes_changed compare;
//  2. the live top goes under an empty overlay (pushTop, one QMP call, as
//     a checkpoint before an exec does): from then on QEMU never writes it,
//     so the checkpoint's layer keeps the size and time it is recorded with
//     whatever happens next (a switch that fails, a guest that remounts by
//     itself after a host that died);
//  3. the pushed tree is written into a raw copy of the chain
//     (writePushLayer), and only then the checkpoint is recorded (durably):
//     the frozen layer, the listing, "sync push SRC DEST";
//  4. the pivot to the new layer and the remount as without checkpoints.
//
// The pushed layer's chain starts afresh (a raw root); the old chain stays
// as long as a checkpoint or snapshot names a layer of it, and goes with
// the usual housekeeping once none does. Undo to the push's checkpoint
// makes an overlay over the frozen layer: the tree before the push,
// exactly. diff --since compares the release's listing with the guest's
// listing afterwards: the copy keeps every untouched inode as it was
// (number, times, size), so only what the push wrote differs.
//
// Kill -9 of any process: before 3 records the checkpoint nothing is
// recorded and the workspace is as before the push (the new layer is
// collected); after it, the checkpoint names the state before the push,
// and the pivot record settles the workspace to the old state or the
// whole push (chain_pivot.go) - a checkpoint taken before a command that
// did not finish, as for any command killed mid-way. A push that falls
// back to the guest's path drops its checkpoint first (that path takes
// its own).

// pushCheckpoint is the checkpoint a host push into a checkpointed
// running workspace takes.
type pushCheckpoint struct {
	label string // the checkpoint's command, redacted
	// Filled in as the push goes: the release's listing, the frozen layer
	// and its bytes, and the checkpoint's number once recorded.
	listing agentapi.LayerManifest
	ref     workspace.LayerRef
	bytes   int64
	number  int
}

// newPushCheckpoint returns the checkpoint a push of sourcePath to dest
// takes, or nil when the workspace takes none.
func newPushCheckpoint(dir vmdir.Dir, rec instance.Record, sourcePath, dest string) *pushCheckpoint {
	if !checkpointsOn(rec) {
		return nil
	}
	return &pushCheckpoint{label: instance.Redactor(dir).String(pushLabel(sourcePath, dest))}
}

// pushLabel is a push's checkpoint label (the same through the guest).
func pushLabel(sourcePath, dest string) string { return "sync push " + sourcePath + " " + dest }

// errNoReleaseListing: the guest released /workspace but sent no listing
// (an agent older than ReleaseWorkspaceListed); the push goes through the
// guest, which takes the checkpoint the usual way.
var errNoReleaseListing = errors.New("the guest agent does not list /workspace at its release")

// releaseWorkspace has the guest release /workspace for hold, with its
// listing when ck is set (step 1).
func releaseWorkspace(ctx context.Context, agent *agentapi.Client, hold time.Duration, ck *pushCheckpoint) error {
	if ck == nil {
		return agent.ReleaseWorkspace(ctx, hold)
	}
	m, ok, err := agent.ReleaseWorkspaceListed(ctx, hold)
	if err != nil {
		return err
	}
	if !ok {
		return errNoReleaseListing
	}
	ck.listing = m
	return nil
}

// freeze puts the released live top under an empty overlay (step 2) and
// returns the new top. The caller holds the layer lock.
func (ck *pushCheckpoint) freeze(ctx context.Context, dir vmdir.Dir, l workspace.Layers) (string, error) {
	// A quiet report kept from before describes a guest the push changes.
	_ = checkpointsOf(dir).ClearPending()
	ref, bytes, err := pushTop(ctx, dir, l, nil)
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	ck.ref, ck.bytes = ref, bytes
	return l.Top()
}

// record records the checkpoint (step 3). The caller holds the layer lock.
func (ck *pushCheckpoint) record(dir vmdir.Dir) error {
	cp, err := checkpointsOf(dir).TakeLayer(ck.ref, ck.bytes, ck.listing, ck.label)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	ck.number = cp.Number
	return nil
}

// drop removes the recorded checkpoint of a push that did not happen on
// the host. The caller holds the layer lock.
func (ck *pushCheckpoint) drop(dir vmdir.Dir) {
	if ck.number > 0 {
		checkpointsOf(dir).Drop(ck.number)
		ck.number = 0
	}
}
