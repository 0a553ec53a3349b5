package workspace

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// Templates caches the empty images new workspaces start from, so a
// create (or a reset to an empty layer) copies the few MiB of ext4
// metadata an empty 8 GiB image holds instead of running mke2fs, and for
// an unseeded baseline mke2fs and debugfs, each time: two to three
// process starts and their fsyncs (~70-100 ms on a quiet 2-core host) per
// create become two sparse copies (~5-10 ms). A copy is byte for byte the
// image mke2fs would have made, but for the file system UUID, which
// nothing reads (mounts go by device, not by UUID).
type Templates struct {
	// Dir holds the templates (the state root's cache). Empty: no cache,
	// every image is made with mke2fs.
	Dir string
}

// templateVersion names the images made by this code: bump it when the
// mke2fs arguments of CreateDisk or baseImage change, so an old template
// is never copied where the new one is meant.
const templateVersion = 1

func (t Templates) path(kind string, size int64) string {
	return filepath.Join(t.Dir, fmt.Sprintf("workspace-%s-v%d-%d.ext4", kind, templateVersion, size))
}

// EmptyDisk makes path (replaced atomically, durable) an empty ext4 disk
// of size bytes: a workspace's writable upper layer.
func (t Templates) EmptyDisk(ctx context.Context, path string, size int64) error {
	return t.emptyDisk(ctx, path, size, func(tpl string) error {
		_, _, err := CopyImage(tpl, path, 0, "empty workspace disk", "")
		return err
	})
}

// EmptyDiskUnsynced is EmptyDisk without making the copy durable (nor
// hashing it): for a new unseeded workspace's upper disk, which its first
// boot may replace with a mounted snapshot's (internal/vm/warm_mounted.go)
// and which the supervisor syncs after that boot (TakeFresh). Without
// a template cache the disk is made with mke2fs, synced.
func (t Templates) EmptyDiskUnsynced(ctx context.Context, path string, size int64) error {
	return t.emptyDisk(ctx, path, size, func(tpl string) error { return CopyFreshDisk(tpl, path) })
}

// emptyDisk makes path with mke2fs without a template cache, else with
// copyFrom of the disk template of size bytes (made on first use).
func (t Templates) emptyDisk(ctx context.Context, path string, size int64, copyFrom func(tpl string) error) error {
	if t.Dir == "" {
		return CreateDisk(ctx, path, size)
	}
	tpl, err := t.get("disk", size, func(p string) error { return CreateDisk(ctx, p, size) })
	if err != nil {
		return err
	}
	return copyFrom(tpl)
}

// EmptyBase makes path (replaced atomically, durable) the baseline of an
// unseeded workspace, with its (empty) index beside it, and returns the
// image's digest and data bytes (ImageDigest), computed while copying.
func (t Templates) EmptyBase(ctx context.Context, path string, size int64) (string, int64, error) {
	if err := writeEmptyIndex(filepath.Join(filepath.Dir(path), BaseIndexFile)); err != nil {
		return "", 0, err
	}
	build := func(p string) error { return emptyBaseImage(ctx, p, size) }
	if t.Dir == "" {
		if err := build(path); err != nil {
			return "", 0, err
		}
		return ImageDigest(path)
	}
	tpl, err := t.get("base", size, build)
	if err != nil {
		return "", 0, err
	}
	return CopyImage(tpl, path, 0, "empty workspace baseline", "")
}

// get returns the template of kind and size, made with build on first
// use. build writes a temporary file that is made durable and renamed into
// place, so a template that exists is whole; two processes making the same
// one at once both succeed, the later rename wins, with the same content.
func (t Templates) get(kind string, size int64, build func(path string) error) (string, error) {
	p := t.path(kind, size)
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Size() == size {
		return p, nil
	}
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(t.Dir, ".tmp-template-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	img := filepath.Join(tmp, "img")
	if err := build(img); err != nil {
		return "", err
	}
	if err := fsutil.Sync(img); err != nil {
		return "", err
	}
	if err := os.Rename(img, p); err != nil {
		return "", err
	}
	return p, fsutil.Sync(t.Dir)
}

// emptyBaseImage makes the image of an empty baseline at img.
func emptyBaseImage(ctx context.Context, img string, size int64) error {
	tree, err := os.MkdirTemp(filepath.Dir(img), ".empty-tree-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	return baseImage(ctx, img, tree, size)
}

// writeEmptyIndex writes the baseline index of an empty tree (no entries:
// see writeBaseIndex), durably.
func writeEmptyIndex(path string) error {
	return fsutil.WriteFileAtomic(path, nil, 0o600)
}
