package tarutil

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Selected names one entry of a TarSelected stream: a path relative to the
// root (slash-separated, no "..") and whether its contents go along.
type Selected struct {
	Name    string
	Subtree bool
}

// TarSelected writes the entries sel names under root, in the order given,
// as TarDir writes them (same names, same rules for links and special
// files). A name that does not exist under root is left out: the caller
// asks both sides of a change for the same names and compares what each
// has. A Subtree entry that is a directory brings its contents too. The
// caller gives names that do not overlap. The tar is closed on success.
func TarSelected(w io.Writer, root string, sel []Selected) (count int, bytes int64, err error) {
	tw := tar.NewWriter(w)
	add := func(p, name string) error {
		n, err := writeEntry(tw, p, name)
		if err != nil {
			return err
		}
		if n >= 0 {
			count++
			bytes += n
		}
		return nil
	}
	for _, s := range sel {
		if c, err := CleanName(s.Name); err != nil || c != s.Name || c == "." {
			return count, bytes, fmt.Errorf("%w: %q is not a clean relative name", ErrUnsafePath, s.Name)
		}
		p := filepath.Join(root, filepath.FromSlash(s.Name))
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return count, bytes, err
		}
		if !s.Subtree || !fi.IsDir() {
			if err := add(p, s.Name); err != nil {
				return count, bytes, err
			}
			continue
		}
		err = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, q)
			if err != nil {
				return err
			}
			return add(q, filepath.ToSlash(rel))
		})
		if err != nil {
			return count, bytes, err
		}
	}
	return count, bytes, tw.Close()
}
