// Package fsutil holds the few file helpers several packages need, so each
// exists once: atomic writes, appending a line, fsync of a path, removing a
// tree with read-only directories, reading
// the end of a log, and an flock that gives up when its context ends.
package fsutil

import (
	"bufio"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteFileAtomic writes data to a temp file beside path, fsyncs it,
// renames it over path and fsyncs the directory: readers see the old
// content or the new, never a part, even across a crash.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := ReplaceWith(path, mode, true, bytesWriter(data)); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// WriteCache replaces the cache file at path with data as WriteFileAtomic
// does, without the fsyncs: a host crash may lose it, and the next reader
// rebuilds what it finds missing.
func WriteCache(path string, data []byte, mode os.FileMode) error {
	return ReplaceWith(path, mode, false, bytesWriter(data))
}

func bytesWriter(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}
}

// ReplaceWith replaces path with what write writes, through a temporary
// file of its own beside it (a unique name: two writers of path never
// share one, where a fixed "path.tmp" let one rename, truncate or remove
// the other's half-written file) and a rename: a reader, and a process
// killed half way, see the old content or the new, never a part. With
// sync the new content reaches the disk before the rename (for a host
// crash; caches a crash may lose do without).
func ReplaceWith(path string, mode os.FileMode, sync bool, write func(w io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
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
