package workspace

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// replaceFileWith replaces p with what write writes, through a temporary
// file of its own beside it (a unique name: two writers of p never share
// one, where a fixed "p.tmp" let one rename, truncate or remove the
// other's half-written file) and a rename: a reader (and a process killed
// half way) sees the old content or the new, never a part. With sync the
// new content is flushed to the disk before the rename (see replaceFile).
func replaceFileWith(p string, sync bool, write func(w io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(p), err)
	}
	w := bufio.NewWriter(f)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", filepath.Base(p), err)
	}
	return nil
}
