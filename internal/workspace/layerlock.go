package workspace

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// LayersLockFile is the flock that serialises layer changes of one
// workspace between processes (the CLI's checkpoints and pushes, the
// supervisor's housekeeping and a fork's save of the upper layer).
const LayersLockFile = ".layers.lock"

// LockLayers takes the layer lock of the workspace directory dir. A
// caller waits for the lock as long as its context lets it (a stuck
// holder, say a checkpoint whose guest stopped answering, no longer holds
// every later call forever).
func LockLayers(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, LayersLockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := fsutil.LockContext(ctx, f); err != nil {
		f.Close()
		if ctx.Err() != nil {
			return nil, errdefs.Wrap(errdefs.ErrUnavailable, err,
				"another checkpoint, snapshot or restore of this workspace is still running: retry once it ends, or allow this call more time",
				"wait for the workspace's layer lock")
		}
		return nil, fmt.Errorf("lock the workspace's layers: %w", err)
	}
	return func() { f.Close() }, nil
}
