package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// FreshFile marks a new unseeded layered workspace whose disks are still
// untouched copies of the empty templates (Templates): it holds the
// baseline's digest. Its first boot may then restore a guest that has the
// empty /workspace mounted already (internal/vm/warm_mounted.go), which is
// sound only while the disks are the templates' bytes, so the supervisor
// takes (reads and removes) the mark before that boot: no later boot sees
// it.
const FreshFile = "fresh-disks"

// MarkFresh writes dir's FreshFile with the baseline's digest.
func MarkFresh(dir, baseDigest string) error {
	return fsutil.WriteFileAtomic(filepath.Join(dir, FreshFile), []byte(baseDigest+"\n"), 0o600)
}

// TakeFresh returns the baseline digest FreshFile holds and removes the
// file ("" when there is none, or it cannot be removed: a mark that would
// outlive the boot must not be used). marked reports whether dir was
// marked at all (even when the mark could not be used): the upper disk of
// a marked workspace was copied unsynced at create
// (Templates.EmptyDiskUnsynced), so its first boot's caller makes it
// durable (SyncFile) once the boot, which may replace it, is over.
func TakeFresh(dir string) (digest string, marked bool) {
	p := filepath.Join(dir, FreshFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	if err != nil || len(b) > 256 || os.Remove(p) != nil {
		return "", true
	}
	return strings.TrimSpace(string(b)), true
}

// CopyFreshDisk replaces dst with a sparse copy of the image src, made in
// the kernel (copy_file_range) and not synced: the caller syncs the
// returned file (SyncFile) while the guest starts, and waits for it before
// the workspace is handed out.
func CopyFreshDisk(src, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), ".tmp-fresh-"+filepath.Base(dst))
	_ = os.Remove(tmp)
	if err := sparseCopy(src, tmp, 1<<62); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// SyncFile makes path's data and its directory entry durable.
func SyncFile(path string) error {
	if err := fsutil.Sync(path); err != nil {
		return err
	}
	return fsutil.Sync(filepath.Dir(path))
}
