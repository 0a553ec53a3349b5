package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/golden"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Mounted-workspace snapshots (issue #14): the first start of a new
// unseeded workspace restores a guest that already has its empty layered
// /workspace mounted, instead of one that mounts it after the restore.
// Under TCG the mount (ext4 twice, overlay, their first block reads) is
// ~12k guest blocks every fresh QEMU translates anew: a third of a warm
// create.
//
// It is sound only because the new workspace's disks are, byte for byte,
// the disks the snapshot's guest had when it was saved, so every block the
// guest holds in its caches is the block on the disk:
//   - the baseline is a copy of the cached empty template, like the
//     snapshot guest's: the snapshot records its digest and a workspace
//     whose baseline digest differs (a template made anew since) is not
//     restored from it;
//   - the upper disk is not the template (mounting wrote its superblock,
//     journal and overlay's work directories): the snapshot keeps the
//     upper disk as its guest left it (golden.UpperFile), and the start
//     replaces the workspace's fresh upper disk with a copy of that file.
// The host says a workspace is such a new one (Config.FreshWorkspace)
// only before its first boot; every later start (its disks written)
// restores the ordinary workspace snapshot, which mounts after restore.

// freshWorkspace reports whether c may restore a mounted-workspace
// snapshot: a new unseeded layered workspace whose disks nothing wrote.
func freshWorkspace(c Config) bool {
	return c.FreshWorkspace != "" && c.WorkspaceDisk != "" && c.WorkspaceBase != "" && len(c.WorkspaceChain) == 0
}

// findMounted puts, when the mounted-workspace snapshot for c exists (it
// is built on first use) and matches the workspace's baseline, a copy of
// its upper disk in place of the workspace's and makes v restore from it.
// It reports whether it did; otherwise the ordinary lookup follows.
func findMounted(ctx context.Context, d Deps, c Config, v *VM) (bool, error) {
	snap, err := mountedSnapshot(ctx, d, c, v)
	if snap == nil || err != nil {
		return false, err
	}
	if snap.Manifest.BaseDigest != c.FreshWorkspace {
		// Another empty template than the snapshot's guest cached.
		d.Logger.Debug("mounted-workspace snapshot not used: another baseline", "vm_id", v.ID)
		return false, nil
	}
	if err := workspace.CopyFreshDisk(snap.UpperPath(), c.WorkspaceDisk); err != nil {
		return false, fmt.Errorf("copy the snapshot's workspace disk: %w", err)
	}
	// Made durable while QEMU starts and restores; refreshIdentity waits
	// for it, so no workspace is handed out on a disk a host crash could
	// take back.
	synced := make(chan error, 1)
	go func() { synced <- workspace.SyncFile(c.WorkspaceDisk) }()
	v.warm.snapshot, v.warm.mounted, v.warm.diskSynced = snap, true, synced
	return true, nil
}

// awaitDiskSynced waits for the sync findMounted started.
func awaitDiskSynced(ctx context.Context, v *VM) error {
	if v.warm.diskSynced == nil {
		return nil
	}
	select {
	case err := <-v.warm.diskSynced:
		v.warm.diskSynced = nil
		if err != nil {
			return fmt.Errorf("sync the workspace disk: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mountedSnapshot looks up the mounted-workspace snapshot for c, building
// it when there is none (and none failed recently); nil when there is
// none to use.
func mountedSnapshot(ctx context.Context, d Deps, c Config, v *VM) (*golden.Snapshot, error) {
	st, err := os.Stat(c.WorkspaceDisk)
	if err != nil {
		return nil, err
	}
	key, ok := v.snapshotKeyFor(c, true)
	if !ok {
		return nil, nil
	}
	key.WorkspaceBytes = st.Size()
	snap, note, err := lookupOrBuild(ctx, d, c, v, key)
	if err != nil {
		return nil, err
	}
	if snap == nil {
		if c.buildNow {
			return nil, errors.New(note)
		}
		// The ordinary snapshot this time.
		d.Logger.Debug("no mounted-workspace snapshot", "vm_id", v.ID, "why", note)
	}
	return snap, nil
}

// PrepareMountedSnapshot is PrepareSnapshot of the snapshot a new unseeded
// workspace of c's configuration restores (c names placeholder disks of
// a workspace disk's size).
func PrepareMountedSnapshot(ctx context.Context, d Deps, c Config) (golden.Snapshot, error) {
	return prepare(ctx, d, c, func(ctx context.Context, d Deps, c Config, v *VM) (*golden.Snapshot, error) {
		s, err := mountedSnapshot(ctx, d, c, v)
		if err == nil && s == nil {
			err = fmt.Errorf("backend %q cannot restore memory snapshots", v.Backend)
		}
		return s, err
	})
}

// mountedDisks gives the guest of a mounted-workspace snapshot build its
// disks in the build directory: copies of the empty templates (the upper
// one is kept as the snapshot's golden.UpperFile), and a read-only
// transfer placeholder larger than any transfer disk. It returns the
// files to remove once the snapshot is saved.
func mountedDisks(ctx context.Context, d Deps, b *golden.Build, size int64, gc *Config) ([]string, error) {
	tpl := workspace.Templates{Dir: d.Dirs.Cache()}
	gc.WorkspaceDisk = b.UpperPath()
	if err := tpl.EmptyDisk(ctx, gc.WorkspaceDisk, size); err != nil {
		return nil, err
	}
	gc.WorkspaceBase = filepath.Join(b.Dir, "base.ext4")
	sum, _, err := tpl.EmptyBase(ctx, gc.WorkspaceBase, size)
	if err != nil {
		return nil, err
	}
	b.BaseDigest = sum
	gc.TransferDisk = filepath.Join(b.Dir, "placeholder-transfer.img")
	if err := os.WriteFile(gc.TransferDisk, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(gc.TransferDisk, basePlaceholderBytes); err != nil {
		return nil, err
	}
	return []string{gc.WorkspaceBase, filepath.Join(b.Dir, workspace.BaseIndexFile), gc.TransferDisk}, nil
}
