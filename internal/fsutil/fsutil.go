// Package fsutil holds the few file helpers several packages need, so each
// exists once: atomic writes, appending a line, fsync of a path, removing a
// tree with read-only directories, reading
// the end of a log, and an flock that gives up when its context ends.
package fsutil

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteFileAtomic writes data to a temp file beside path, fsyncs it,
// renames it over path and fsyncs the directory: readers see the old
// content or the new, never a part, even across a crash.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Sync fsyncs the file or directory at path (a directory: so the names
// created or renamed in it survive a crash).
func Sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// LastLines returns the last n non-empty lines of the file at path, joined
// with "; " (for error messages that quote a log).
func LastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// AppendLine appends line and a newline to the file at path (created 0600
// when missing) in one write, so concurrent appenders do not interleave
// within a line.
func AppendLine(path string, line []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// RemoveAll is os.RemoveAll that also removes a tree with read-only
// directories in it (a seed's staging tree carries the seed's modes, and
// unlinking in a read-only directory is refused to all but root): when
// the first pass fails, the tree's directories are made writable and it
// is removed again. Files are never chmod'ed (one may be a hard link to a
// file of the user's).
func RemoveAll(path string) error {
	if os.RemoveAll(path) == nil {
		return nil
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}
