package pyro

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Layered workspaces (see internal/workspace/layers.go): /workspace is the
// guest's overlay of a baseline image built on the host and an upper layer
// image the guest writes. Seeding is mke2fs -d on the host, a diff reads
// only the upper layer's entries, a reset to the baseline is an empty upper
// layer, and a snapshot copies the upper layer while the guest holds it
// frozen. Host-compat workspaces keep the single-disk layout: that backend
// mounts /workspace itself.

// layered reports whether a workspace keeps /workspace as layers.
func layered(rec instance.Record) bool { return rec.WorkspaceBase != "" && rec.WorkspaceDisk != "" }

// freezeFor bounds a freeze of the guest's upper layer should the host die
// before it thaws it: writes to /workspace block meanwhile.
const freezeFor = 60 * time.Second

// buildBase makes a new workspace's baseline image when it has no seed
// (copied from a template, with its digest) and records it in rec. A
// seed's baseline is only prepared here, at its final size: it is built
// while the guest starts (workspace_seedbuild.go).
func (c *Client) buildBase(ctx context.Context, dir vmdir.Dir, rec *instance.Record, seeded bool) (baseDigest, error) {
	rec.WorkspaceBase = dir.Path(workspace.BaseFile)
	if seeded {
		return baseDigest{}, workspace.PrepareBase(rec.WorkspaceBase, workspace.DiskBytes())
	}
	sum, n, err := c.templates().EmptyBase(ctx, rec.WorkspaceBase, workspace.DiskBytes())
	return baseDigest{sum, n}, err
}

// baseDigest is a baseline image's digest and data bytes.
type baseDigest struct {
	sum string
	n   int64
}

// record records the baseline of a layered workspace in dir.
func (d baseDigest) record(dir vmdir.Dir) error {
	_, err := snapshotsOf(dir).RecordBase(d.sum, d.n)
	return err
}

// templates are the cached empty images new workspace disks are copied
// from (internal/workspace/templates.go).
func (c *Client) templates() workspace.Templates {
	return workspace.Templates{Dir: c.dirs.Cache()}
}

// snapshotLayer stores the current upper layer as snapshot name: the guest
// freezes it (flushed, writers held), the host copies its image, the guest
// thaws it.
func (c *Client) snapshotLayer(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, name string) (Snapshot, error) {
	if chainable(dir) {
		if err := workspace.ValidateSnapshotName(name); err != nil {
			return Snapshot{}, err
		}
		unlock, err := lockLayers(ctx, dir)
		if err != nil {
			return Snapshot{}, err
		}
		defer unlock()
		ref, _, _, err := captureUpper(ctx, dir, rec, agent, false)
		if err != nil {
			return Snapshot{}, err
		}
		bytes, err := layersOf(dir, rec).ChainBytes(ref.Layer)
		if err != nil {
			return Snapshot{}, err
		}
		snap, err := snapshotsOf(dir).SaveLayer(name, ref, bytes)
		return snapshotFrom(snap), err
	}
	if err := agent.FreezeLayer(ctx, freezeFor); err != nil {
		return Snapshot{}, fmt.Errorf("freeze /workspace: %w", err)
	}
	defer func() { _ = agent.ThawLayer(context.WithoutCancel(ctx)) }()
	snap, err := snapshotsOf(dir).SaveUpper(name, rec.WorkspaceDisk)
	return snapshotFrom(snap), err
}

// freshLayer replaces the upper layer for a reset: empty for the baseline,
// else a copy of the verified snapshot image. A chained upper layer gets a
// new root instead (the old one may be what saved states stand on).
func (c *Client) freshLayer(ctx context.Context, dir vmdir.Dir, rec instance.Record, image string) error {
	if layersOf(dir, rec).Chained() {
		return restoreChain(ctx, dir, rec, nil, image)
	}
	if image == "" {
		return c.templates().EmptyDisk(ctx, rec.WorkspaceDisk, workspace.DiskBytes())
	}
	_, _, err := workspace.CopyImage(image, rec.WorkspaceDisk, 0, "snapshot", "")
	return err
}

// resetLayered recreates the sandbox with the upper layer of snapshot: an
// empty one for the baseline. The snapshot is verified before anything is
// destroyed; no /workspace byte goes through the guest.
func (c *Client) resetLayered(ctx context.Context, dir vmdir.Dir, rec instance.Record, snapshot string) error {
	ref, isLayer, err := snapshotsOf(dir).LayerOf(snapshot, layersOf(dir, rec))
	if err != nil {
		return err
	}
	var image string
	if !isLayer {
		if image, err = snapshotsOf(dir).VerifyLayered(snapshot, rec.WorkspaceBase); err != nil {
			return err
		}
	}
	return c.lc.Reset(ctx, dir, rec, lifecycle.ResetSteps{
		Fresh: func(ctx context.Context) error {
			if isLayer {
				err = restoreChain(ctx, dir, rec, &ref, "")
			} else {
				err = c.freshLayer(ctx, dir, rec, image)
			}
			if err != nil {
				return err
			}
			return clearHistory(dir)
		},
		Restore: func(_ context.Context, _ *agentapi.Client, r *instance.Record) error {
			countReset(r)
			return nil
		},
	})
}

// clearHistory removes the command history (a reset clears it).
func clearHistory(dir vmdir.Dir) error {
	if err := os.Remove(dir.Path(workspace.HistoryFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// countReset records one more reset in r.
func countReset(r *instance.Record) {
	m := metaOf(*r)
	m.ResetCount++
	now := time.Now().UTC()
	m.LastResetAt = &now
	setMeta(r, m)
}
