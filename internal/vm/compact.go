package vm

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// compactState rewrites a snapshot's freshly saved state file with the
// backend's compactor, when it has one (vmm.StateCompactor: QEMU drops the
// zero pages of guest RAM, whose loading faulted in every untouched page
// of a restoring guest). The compacted copy is written beside the state and
// renamed over it once whole and synced; when the backend does not know
// the stream the original stays, and restores are only slower.
func compactState(sb snapshotBackend, statePath string) error {
	c, ok := sb.(vmm.StateCompactor)
	if !ok {
		return nil
	}
	in, err := os.Open(statePath)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := filepath.Join(filepath.Dir(statePath), ".compact-"+filepath.Base(statePath))
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after the rename: nothing there
	err = c.CompactState(in, out)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("compact the saved state (kept as saved): %w", err)
	}
	if err := os.Rename(tmp, statePath); err != nil {
		return err
	}
	return fsutil.Sync(filepath.Dir(statePath))
}
