package pyro

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// O(1) snapshots and checkpoints of a QEMU workspace's upper layer (see
// internal/workspace/chain.go): with the guest's file system frozen, an
// empty qcow2 overlay goes over the live disk through QMP and the old top
// is the saved state; no byte of /workspace is copied or hashed. A backend
// without QMP (host-compat, the fake backend of unit tests) keeps the copy
// of layers.go.

func layersOf(dir vmdir.Dir, rec instance.Record) workspace.Layers {
	return workspace.Layers{Dir: string(dir), Disk: rec.WorkspaceDisk}
}

// chainable reports whether the guest's disks can be chained: its VMM is
// QEMU (it has a QMP socket) and still runs. A stopped or crashed
// workspace keeps its socket file (QEMU does not remove a socket it was
// handed, and a killed supervisor cannot), so the file alone would send
// QMP calls to nobody.
func chainable(dir vmdir.Dir) bool {
	st, err := os.Stat(dir.Path(vmdir.QMPSock))
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		return false
	}
	_, alive := instance.VMMPid(dir)
	return alive
}

// mergeSlack is how far the live chain may grow past the checkpoint count
// cap before the layers no state refers to any more are merged (in one
// go, so the merge cost is spread over many commands).
const mergeSlack = 16

// lockLayers serialises layer changes of one workspace between processes
// (workspace.LockLayers).
func lockLayers(ctx context.Context, dir vmdir.Dir) (func(), error) {
	return workspace.LockLayers(ctx, string(dir))
}

// housekeepingLockWait bounds the wait for the layer lock of housekeeping
// that runs after its caller's work is done (dropping layers, a
// checkpoint, an exec's quiet report): a stuck holder makes it give up and
// leave the work to the next call, rather than hold its caller forever.
// A variable for tests.
var housekeepingLockWait = 30 * time.Second

// lockLayersForHousekeeping takes the layer lock for such housekeeping,
// waiting at most housekeepingLockWait whatever the caller's context
// (housekeeping runs after an exec even when its caller went away).
func lockLayersForHousekeeping(ctx context.Context, dir vmdir.Dir) (func(), error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), housekeepingLockWait)
	defer cancel()
	return lockLayers(ctx, dir)
}

// captureUpper freezes the running guest's upper layer and returns it as a
// frozen layer (the live disk goes on in a new overlay), with the guest's
// listing of it when manifest is set. It is the one way to capture the
// upper layer of a running workspace: snapshots, checkpoints (and a fork's
// copy of its source) use it. The caller holds the layer lock.
func captureUpper(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, manifest bool) (workspace.LayerRef, int64, agentapi.LayerManifest, error) {
	var m agentapi.LayerManifest
	listed := false
	var err error
	freeze := func() {
		if manifest {
			m, listed, err = agent.FreezeLayerManifest(ctx, freezeFor)
		} else {
			err = agent.FreezeLayer(ctx, freezeFor)
		}
	}
	freeze()
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		// A host push that died left /workspace released (its guest
		// would remount it by itself when the release's bound passes):
		// a push holds the layer lock from its release to its remount,
		// so under the lock no push is under way, and the guest mounts
		// what QEMU serves now, as it would by itself. Remounting a
		// mounted /workspace changes nothing (then the freeze fails
		// again for its own reason).
		if agent.RemountWorkspace(ctx, true) == nil {
			freeze()
		}
	}
	// Thawed on every way out, also when the listing failed after the
	// freeze (thawing a layer that is not frozen is a no-op).
	defer func() { _ = agent.ThawLayer(context.WithoutCancel(ctx)) }()
	if err != nil {
		return workspace.LayerRef{}, 0, m, fmt.Errorf("freeze /workspace: %w", err)
	}
	if manifest && !listed {
		if m, err = agent.LayerManifest(ctx); err != nil {
			return workspace.LayerRef{}, 0, m, fmt.Errorf("list /workspace changes: %w", err)
		}
	}
	ref, bytes, err := pushTop(ctx, dir, layersOf(dir, rec), nil)
	return ref, bytes, m, err
}

// pushTop freezes the live top layer under an empty overlay and returns
// it (with the bytes its file holds): the next overlay when one was made
// ahead over it (chain_next.go: one QMP call), else a new one. The guest's
// disk holds the state to keep (frozen, or synced and quiet); the caller
// holds the layer lock.
func pushTop(ctx context.Context, dir vmdir.Dir, l workspace.Layers, t *phases) (workspace.LayerRef, int64, error) {
	top, err := resolveTop(ctx, dir, l)
	if err != nil {
		return workspace.LayerRef{}, 0, err
	}
	n, ok := l.NextOver(top)
	t.mark("next_over")
	if !ok {
		discardNext(ctx, dir, l, top)
		over, err := l.NewOverlay(top)
		if err != nil {
			return workspace.LayerRef{}, 0, err
		}
		n = workspace.NextLayer{Layer: over, Parent: top}
		if err := l.SetNext(n); err != nil {
			_ = os.Remove(l.Path(over))
			return workspace.LayerRef{}, 0, err
		}
	}
	// The new top is named before QEMU switches to it, and the record of
	// the next overlay, which now names the top, says the switch is under
	// way until it goes: should this process die in between, resolveTop
	// asks QEMU; should QEMU die, the chain read at the next boot has an
	// empty layer over the old top, which reads the same.
	if err := l.PushedTop(n.Layer); err != nil {
		return workspace.LayerRef{}, 0, err
	}
	t.mark("name_top")
	if err := switchTop(ctx, dir, l, n); err != nil {
		_ = l.PushedTop(top)
		discardNext(ctx, dir, l, top)
		return workspace.LayerRef{}, 0, fmt.Errorf("freeze the upper layer: %w", err)
	}
	t.mark("qemu_switch")
	_ = l.ClearNext()
	return l.Ref(top)
}

// QEMU's side of the layer switches (seams for unit tests).
var (
	qemuPush     = qemu.PushOverlay
	qemuStage    = qemu.StageOverlay
	qemuSwitch   = qemu.SwitchOverlay
	qemuUnstage  = qemu.UnstageOverlay
	qemuLiveNode = qemu.LiveNode
	qemuFlush    = qemu.FlushLive
)

// switchTop has QEMU put the overlay n over the live top: a staged node
// switches in one call; one QEMU does not hold (it restarted since it was
// staged) is handed over the usual way. A failed call that switched all
// the same (its answer lost) is a switch. QEMU is asked which layer the
// guest writes also when ctx ended (a cancelled caller is the usual way
// an answer is lost): a switch taken for a failed one would have the
// layer the guest writes deleted under it.
func switchTop(ctx context.Context, dir vmdir.Dir, l workspace.Layers, n workspace.NextLayer) error {
	path := l.Path(n.Layer)
	liveNode := func() (string, error) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		defer cancel()
		return qemuLiveNode(qctx, dir)
	}
	var err error
	if n.Staged {
		if err = qemuSwitch(ctx, dir, path, n.DropParentRW); err == nil {
			return nil
		}
		if live, lerr := liveNode(); lerr == nil && live == qemu.NodeName(l.Path(n.Parent)) {
			_ = qemuUnstage(ctx, dir, path)
			err = qemuPush(ctx, dir, path)
		}
	} else {
		err = qemuPush(ctx, dir, path)
	}
	if err != nil {
		if live, lerr := liveNode(); lerr == nil && live == qemu.NodeName(path) {
			return nil
		}
	}
	return err
}

// settleTimeout bounds the question that settles a failed switch.
const settleTimeout = 5 * time.Second

// resolveTop returns the live top, first settling a switch a dead process
// left under way (the top is named, QEMU may not have switched): QEMU says
// which layer it writes. Without a running QEMU the next boot reads the
// chain from the named top, which reads the same as the layer below it.
func resolveTop(ctx context.Context, dir vmdir.Dir, l workspace.Layers) (string, error) {
	if err := settlePivot(ctx, dir, l); err != nil { // workspace_hostpush_running.go
		return "", err
	}
	top, err := l.Top()
	if err != nil {
		return "", err
	}
	n, switching := l.Switching(top)
	if !switching {
		return top, nil
	}
	if chainable(dir) {
		live, err := qemuLiveNode(ctx, dir)
		if err != nil {
			return "", fmt.Errorf("find the layer the guest writes: %w", err)
		}
		switch live {
		case qemu.NodeName(l.Path(top)):
		case qemu.NodeName(l.Path(n.Parent)):
			if err := switchTop(ctx, dir, l, n); err != nil {
				return "", fmt.Errorf("finish a layer switch: %w", err)
			}
		default:
			return "", fmt.Errorf("the guest writes layer node %q, not %s", live, top)
		}
	}
	return top, l.ClearNext()
}

// discardNext drops a next overlay that is not over top any more (QEMU's
// node of it first, so that QEMU holds no deleted file).
func discardNext(ctx context.Context, dir vmdir.Dir, l workspace.Layers, top string) {
	n, ok := l.Next()
	if !ok || n.Layer == top {
		return
	}
	if n.Staged && chainable(dir) {
		_ = qemuUnstage(ctx, dir, l.Path(n.Layer))
	}
	_ = l.ClearNext()
	_ = os.Remove(l.Path(n.Layer))
}

// stageNext makes the next overlay over the live top ahead and hands it to
// QEMU (chain_next.go). The caller holds the layer lock; the guest may be
// running a command meanwhile.
func stageNext(ctx context.Context, dir vmdir.Dir, l workspace.Layers, t *phases) error {
	top, err := resolveTop(ctx, dir, l)
	if err != nil {
		return err
	}
	if n, ok := l.NextOver(top); ok && n.Staged {
		return nil
	}
	discardNext(ctx, dir, l, top)
	over, err := l.NewOverlay(top)
	if err != nil {
		return err
	}
	t.mark("new_overlay")
	topRW, err := qemuStage(ctx, dir, l.Path(over), l.Path(top))
	t.mark("qemu_stage")
	if err == nil {
		err = l.SetNext(workspace.NextLayer{Layer: over, Parent: top, Staged: true, DropParentRW: topRW})
	}
	if err != nil {
		_ = qemuUnstage(ctx, dir, l.Path(over))
		_ = os.Remove(l.Path(over))
	}
	return err
}

// restoreChain makes the live chain start from a saved state for a reset
// or an undo (the guest is stopped): a fresh overlay over the frozen layer
// ref, else a new root, empty (image "") or copied from an image saved
// before chains. Layers nothing refers to any more are deleted.
func restoreChain(ctx context.Context, dir vmdir.Dir, rec instance.Record, ref *workspace.LayerRef, image string) error {
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	l := layersOf(dir, rec)
	// A next overlay made over the old chain goes (the guest is stopped:
	// no QEMU holds it); GC below deletes its file.
	_ = l.ClearNext()
	var top string
	if ref != nil {
		top, err = l.NewOverlay(ref.Layer)
	} else {
		top, err = l.NewRoot(ctx, image)
	}
	if err != nil {
		return err
	}
	if err := l.SetTop(top); err != nil {
		_ = os.Remove(l.Path(top))
		return err
	}
	// A quiet report of the guest before describes another state.
	_ = checkpointsOf(dir).ClearPending()
	return l.GC(workspace.KeepLayers(string(dir)))
}

// gcLayers deletes unreferenced layers and merges the live chain's layers
// that no state refers to (block-commit into their parent), once the chain
// is mergeSlack longer than the checkpoint cap.
func gcLayers(ctx context.Context, dir vmdir.Dir, rec instance.Record, maxCount int) error {
	l := layersOf(dir, rec)
	keep := workspace.KeepLayers(string(dir))
	if err := l.GC(keep); err != nil {
		return err
	}
	// The live chain is at most the layer files and the root disk long:
	// below the merge length it need not be read (a walk of ~60 headers
	// after every exec).
	if ents, err := os.ReadDir(filepath.Join(string(dir), workspace.LayersDir)); err == nil && len(ents)+1 <= maxCount+mergeSlack {
		return nil
	}
	top, err := l.Top()
	if err != nil {
		return err
	}
	live, err := l.Chain(top)
	if err != nil {
		return err
	}
	if len(live) <= maxCount+mergeSlack {
		return nil
	}
	ends := map[string]bool{top: true}
	children := map[string]map[string]bool{}
	for _, e := range append(keep, top) {
		ends[e] = true
		ch, err := l.Chain(e)
		if err != nil {
			continue
		}
		for i := 1; i < len(ch); i++ {
			if children[ch[i-1]] == nil {
				children[ch[i-1]] = map[string]bool{}
			}
			children[ch[i-1]][ch[i]] = true
		}
	}
	// x absorbs its child y when neither is a saved state and neither has
	// another child: every chain through y then reads the same through x.
	for i := 0; i+2 < len(live); {
		x, y := live[i], live[i+1]
		if ends[x] || ends[y] || len(children[x]) != 1 || len(children[y]) != 1 {
			i++
			continue
		}
		rel, err := filepath.Rel(filepath.Join(string(dir), workspace.LayersDir), l.Path(x))
		if err != nil {
			return err
		}
		if err := qemu.CommitLayer(ctx, dir, l.Path(y), l.Path(x), l.Path(live[i+2]), rel); err != nil {
			return err
		}
		children[x] = children[y]
		_ = os.Remove(l.Path(y))
		live = append(live[:i+1], live[i+2:]...)
	}
	return nil
}

// dropUnreferenced deletes the layers nothing refers to any more (after an
// undo dropped checkpoints, or a snapshot was deleted), under the layer
// lock so that a capture's new overlay, not yet named the top, is safe.
func dropUnreferenced(dir vmdir.Dir, rec instance.Record) error {
	l := layersOf(dir, rec)
	if !l.Chained() {
		return nil
	}
	unlock, err := lockLayersForHousekeeping(context.Background(), dir)
	if err != nil {
		return err
	}
	defer unlock()
	return l.GC(workspace.KeepLayers(string(dir)))
}
