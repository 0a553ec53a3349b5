package workspace

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// replaceFileWith replaces p with what write writes (fsutil.ReplaceWith,
// owner-only), flushed to the disk before the rename when sync is set
// (see replaceFile).
func replaceFileWith(p string, sync bool, write func(w io.Writer) error) error {
	if err := fsutil.ReplaceWith(p, 0o600, sync, write); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(p), err)
	}
	return nil
}
