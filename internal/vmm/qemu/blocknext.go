package qemu

import (
	"context"
	"strings"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// The next overlay, handed to QEMU ahead (see internal/workspace
// chain_next.go): StageOverlay adds it as a node of its own while the
// guest runs a command, so that the checkpoint after it is one
// blockdev-snapshot (SwitchOverlay) instead of six calls.
//
// Writable descriptors: the staged node opens its file read-write when it
// is added, so its set's writable descriptor is removed at once (the
// node's block layer keeps its own; a blockdev-add node has no
// auto-read-only, so nothing reopens it for writing except a merge, which
// hands in a descriptor for its run). The live top then has none left in
// its set either (it was staged the same way), except the disk QEMU was
// started with: -drive opens it with auto-read-only, and its descriptor
// follows its permissions (a live save for a fork drops and retakes them),
// so it keeps its writable descriptor until it is frozen, and the switch
// that freezes it removes that one (StageOverlay reports it).

// StageOverlay hands QEMU the empty overlay at path as an unattached node.
// It also removes the writable descriptors of frozen layers (as
// PushOverlay does) and reports whether the live top top keeps one: the
// disk QEMU started with.
func StageOverlay(ctx context.Context, dir vmdir.Dir, path, top string) (topRW bool, err error) {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return false, err
	}
	defer q.Close()
	if _, _, err := addOverlayNode(ctx, q, path); err != nil {
		return false, err
	}
	sets, err := fdSets(ctx, q)
	if err != nil {
		return false, err
	}
	live := NodeName(top)
	for _, s := range sets {
		for _, fd := range s.FDs {
			n, ok := strings.CutSuffix(fd.Opaque, ":rw")
			if !ok {
				continue
			}
			if n == live && s.ID == fdsetWorkspace {
				topRW = true
				continue
			}
			if _, err := q.call(ctx, "remove-fd", map[string]any{"fdset-id": s.ID, "fd": fd.FD}, nil); err != nil {
				return topRW, err
			}
		}
	}
	return topRW, nil
}

// SwitchOverlay puts the staged overlay at path over the running guest's
// workspace disk (blockdev-snapshot: QEMU drains the disk, the old top
// becomes the overlay's read-only backing), then, when dropTopRW says the
// old top kept a writable descriptor, removes it. The caller holds the
// guest's /workspace quiet (synced, nothing running) or frozen.
func SwitchOverlay(ctx context.Context, dir vmdir.Dir, path string, dropTopRW bool) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	node := NodeName(path)
	if _, err := q.call(ctx, "blockdev-snapshot", map[string]any{"node": "workspace", "overlay": node}, nil); err != nil {
		return err
	}
	if dropTopRW {
		// As in PushOverlay: past the switch the old top is frozen
		// whatever happens; the next stage drops what is left.
		_ = dropWritable(ctx, q, node)
	}
	return nil
}

// UnstageOverlay removes a staged overlay's node and descriptors from QEMU
// (none there is no error), so that its file can be deleted.
func UnstageOverlay(ctx context.Context, dir vmdir.Dir, path string) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	_, _ = q.call(ctx, "blockdev-del", map[string]any{"node-name": NodeName(path)}, nil)
	sets, err := fdSets(ctx, q)
	if err != nil {
		return err
	}
	if set, _ := setOf(sets, path); set >= 0 {
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
	}
	return nil
}

// LiveNode returns the node name of the running guest's workspace disk
// top (the node the guest writes).
func LiveNode(ctx context.Context, dir vmdir.Dir) (string, error) {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return "", err
	}
	defer q.Close()
	return liveNode(ctx, q)
}
