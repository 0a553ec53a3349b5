package pyro

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
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

// chainable reports whether the running guest's disks can be chained: its
// VMM answers QMP (QEMU).
func chainable(dir vmdir.Dir) bool {
	st, err := os.Stat(dir.Path(vmdir.QMPSock))
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// mergeSlack is how far the live chain may grow past the checkpoint count
// cap before the layers no state refers to any more are merged (in one
// go, so the merge cost is spread over many commands).
const mergeSlack = 16

// lockLayers serialises layer changes of one workspace between processes.
func lockLayers(dir vmdir.Dir) (func(), error) {
	f, err := os.OpenFile(dir.Path(".layers.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
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
	if manifest {
		m, listed, err = agent.FreezeLayerManifest(ctx, freezeFor)
	} else {
		err = agent.FreezeLayer(ctx, freezeFor)
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
	ref, bytes, err := pushTop(ctx, dir, layersOf(dir, rec))
	return ref, bytes, m, err
}

// pushTop freezes the live top layer under a new empty overlay and returns
// it (with the bytes its file holds). The guest's disk holds the state to
// keep (frozen, or synced and quiet); the caller holds the layer lock.
func pushTop(ctx context.Context, dir vmdir.Dir, l workspace.Layers) (workspace.LayerRef, int64, error) {
	top, err := l.Top()
	if err != nil {
		return workspace.LayerRef{}, 0, err
	}
	over, err := l.NewOverlay(top)
	if err != nil {
		return workspace.LayerRef{}, 0, err
	}
	// The new top is named before QEMU switches to it: should anything
	// die in between, the chain read at the next boot has an empty layer
	// over the old top, which reads the same.
	if err := l.SetTop(over); err != nil {
		_ = os.Remove(l.Path(over))
		return workspace.LayerRef{}, 0, err
	}
	if err := qemu.PushOverlay(ctx, dir, l.Path(over)); err != nil {
		_ = l.SetTop(top)
		_ = os.Remove(l.Path(over))
		return workspace.LayerRef{}, 0, fmt.Errorf("freeze the upper layer: %w", err)
	}
	return l.Ref(top)
}

// restoreChain makes the live chain start from a saved state for a reset
// or an undo (the guest is stopped): a fresh overlay over the frozen layer
// ref, else a new root, empty (image "") or copied from an image saved
// before chains. Layers nothing refers to any more are deleted.
func restoreChain(ctx context.Context, dir vmdir.Dir, rec instance.Record, ref *workspace.LayerRef, image string) error {
	unlock, err := lockLayers(dir)
	if err != nil {
		return err
	}
	defer unlock()
	l := layersOf(dir, rec)
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
func gcLayers(ctx context.Context, dir vmdir.Dir, rec instance.Record) error {
	l := layersOf(dir, rec)
	keep := workspace.KeepLayers(string(dir))
	if err := l.GC(keep); err != nil {
		return err
	}
	top, err := l.Top()
	if err != nil {
		return err
	}
	live, err := l.Chain(top)
	if err != nil {
		return err
	}
	maxCount, _ := workspace.CheckpointCaps()
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
	unlock, err := lockLayers(dir)
	if err != nil {
		return err
	}
	defer unlock()
	return l.GC(workspace.KeepLayers(string(dir)))
}
