package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
	// The pending quiet report's epoch and listing file (the state after
	// the exec before, when the guest was quiet: step 1 needs no walk if
	// the guest is still at that epoch); expect 0: none.
	expect  uint64
	pending string
	from    string // where the listing came from: "pending", "guest" or "host"
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
// listing when ck is set (step 1). When the host holds the listing of the
// guest's quiet epoch (the exec before reported it and nothing ran since:
// the guest checks, as for a quiet exec), the guest lists nothing and the
// checkpoint takes that listing: under TCG the walk and encoding of the
// upper layer cost ~60 ms for a few files and ~270 ms for 1,000.
func releaseWorkspace(ctx context.Context, agent *agentapi.Client, hold time.Duration, ck *pushCheckpoint) error {
	if ck == nil {
		return agent.ReleaseWorkspace(ctx, hold)
	}
	var m agentapi.LayerManifest
	var same, ok bool
	var err error
	if ck.expect != 0 {
		m, same, ok, err = agent.ReleaseWorkspaceSince(ctx, hold, ck.expect)
	} else {
		m, ok, err = agent.ReleaseWorkspaceListed(ctx, hold)
	}
	if err != nil {
		return err
	}
	if !ok {
		return errNoReleaseListing
	}
	ck.from = "guest"
	if same {
		ck.from = "pending"
		// Read before the freeze clears the pending report. Should it be
		// unreadable, the push fails (the guest mounts /workspace again)
		// and goes through the guest, which lists as usual.
		b, err := os.ReadFile(ck.pending)
		if err != nil {
			return fmt.Errorf("read the pending listing: %w", err)
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("read the pending listing: %w", err)
		}
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

// maxHostListed bounds the entries of a stopped workspace's upper layer
// listed on the host for a push's checkpoint: past it the push goes
// through the guest (the workspace is started), which lists any size.
const maxHostListed = 100_000

// listHost lists the upper layer of a stopped workspace from its raw
// image upper, on the host (workspace.ListUpper): step 1 without a guest,
// the state the checkpoint keeps being exactly that image's. A listing the
// host cannot make leaves the push to the guest's path.
func (ck *pushCheckpoint) listHost(ctx context.Context, upper string) error {
	m, err := workspace.ListUpper(ctx, upper, maxHostListed)
	if err != nil {
		return fmt.Errorf("%w: list the upper layer: %w", errNotHere, err)
	}
	ck.listing, ck.from = m, "host"
	return nil
}

// recordStopped records the checkpoint of a push into a stopped
// workspace (steps 2 and 3 without a guest): its layer is the live top as
// it is - no QEMU writes it, and the pushed layer is a new root over
// nothing, so nothing ever writes it again - and its listing the one
// listHost made of that top's image. It is recorded durably before the
// pushed layer is named the top: kill -9 before the record leaves no
// checkpoint and the workspace as before; after it, a checkpoint of the
// state the workspace is in until the top is named, as for a command
// killed before it changed anything. The caller holds the layer lock.
func (ck *pushCheckpoint) recordStopped(dir vmdir.Dir, l workspace.Layers) error {
	top, err := l.Top()
	if err != nil {
		return err
	}
	if ck.ref, ck.bytes, err = l.Ref(top); err != nil {
		return err
	}
	return ck.record(dir)
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

// source says where the checkpoint's listing came from (for the log).
func (ck *pushCheckpoint) source() string {
	if ck == nil {
		return ""
	}
	return ck.from
}

// drop removes the recorded checkpoint of a push that did not happen on
// the host. The caller holds the layer lock.
func (ck *pushCheckpoint) drop(dir vmdir.Dir) {
	if ck.number > 0 {
		checkpointsOf(dir).Drop(ck.number)
		ck.number = 0
	}
}
