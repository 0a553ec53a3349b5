// Package tarutil streams directory trees as tar archives and extracts tar
// archives safely. The guest agent uses it for /v1/files/push and
// /v1/files/pull; the host uses it for seeding, sync push, export, snapshots
// and diff. Archives hold regular files, directories, symlinks and hard
// links; devices, fifos and sockets are skipped.
package tarutil

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is wrapped by extraction errors for entries that would land
// outside the destination: absolute names, "..", a path through a symlink,
// or a hard link to outside.
var ErrUnsafePath = errors.New("unsafe path in archive")

// ErrBadArchive is wrapped by extraction errors for a malformed or truncated
// tar stream.
var ErrBadArchive = errors.New("malformed archive")

// ErrTooManyEntries is wrapped by ExtractTarWith when an archive holds more
// entries than ExtractOptions.MaxEntries.
var ErrTooManyEntries = errors.New("too many archive entries")

// Stats counts what was archived or extracted.
type Stats struct {
	Files int   // regular files, symlinks and hard links
	Dirs  int   // directory entries (not the root, not implied parents)
	Bytes int64 // regular file content bytes
	// Skipped lists entries that were not written (devices, fifos,
	// sockets, unknown types, and in untrusted mode symlinks leaving the
	// tree), at most MaxSkipped of them; SkippedCount counts them all.
	Skipped      []Skip
	SkippedCount int
	Entries      int // tar headers read, whatever became of them
}

// Skip is one archive entry that extraction did not write, and why.
type Skip struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// MaxSkipped bounds Stats.Skipped: an archive can hold millions of
// entries, and the list is for people.
const MaxSkipped = 100

func (st *Stats) skip(name, reason string) {
	st.SkippedCount++
	if len(st.Skipped) < MaxSkipped {
		st.Skipped = append(st.Skipped, Skip{Path: name, Reason: reason})
	}
}

// ExtractOptions tune ExtractTarWith.
type ExtractOptions struct {
	// Untrusted is for archives written by a party the caller does not
	// trust (the host extracting what a guest sent). Then the archive's
	// "." entry is ignored; setuid, setgid and sticky bits are dropped;
	// permissions are masked with Umask (directories keep owner rwx so
	// the tree stays removable); and symlinks that are absolute or lead
	// out of dest are not created but listed in Stats.Skipped.
	Untrusted bool
	// Umask is applied to permissions in untrusted mode; see
	// ProcessUmask.
	Umask fs.FileMode
	// Filter, when set, sees every entry (name cleaned, relative) before
	// it is written; skip drops the entry, an error ends the extraction.
	// OCI layers use it for whiteouts and the size cap.
	Filter func(hdr *tar.Header, name string) (skip bool, err error)
	// Owners restores the entries' uid and gid (lchown, before the mode,
	// so setuid bits survive). It needs privilege; image conversion is
	// the one caller.
	Owners bool
	// MaxEntries, when > 0, ends the extraction with ErrTooManyEntries at
	// the header past it. Every header counts ("." entries, whiteouts,
	// skipped ones): an archive of millions of empty entries costs inodes,
	// memory and time long before it costs bytes.
	MaxEntries int
	// CopyData, when set, writes a regular entry's content into f in
	// place of the copy from the stream: the content is the n bytes at
	// offset off of the archive (the caller can read the archive from
	// elsewhere, e.g. a disk, with no copy through this process). It
	// returns the bytes written. When the stream r is an io.Seeker, the
	// tar reader then seeks over the content instead of reading it.
	// Sparse entries are never handed to it.
	CopyData func(f *os.File, off, n int64) (int64, error)
}

// mode returns the permissions an entry gets on disk.
func (o ExtractOptions) mode(h int64, dir bool) fs.FileMode {
	m := goMode(h)
	if !o.Untrusted {
		return m
	}
	m = m.Perm() &^ o.Umask
	if dir {
		m |= 0o700
	}
	return m
}

// TarDir writes the contents of dir as an uncompressed tar stream to w.
// Entry names are relative to dir ("a.txt", "sub/b.bin"), directories end
// in "/", and dir itself is not an entry. Symlinks are stored as links, never
// followed; devices, fifos and sockets are skipped. Owners are not recorded
// (uid/gid 0). count is the number of entries written, bytes the regular
// file content. The tar is finished (closed) on success.
func TarDir(w io.Writer, dir string) (count int, bytes int64, err error) {
	tw := tar.NewWriter(w)
	st, err := os.Lstat(dir)
	if err != nil {
		return 0, 0, err
	}
	if !st.IsDir() {
		return 0, 0, fmt.Errorf("%s: not a directory", dir)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		n, err := writeEntry(tw, p, filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if n >= 0 {
			count++
			bytes += n
		}
		return nil
	})
	if err != nil {
		return count, bytes, err
	}
	return count, bytes, tw.Close()
}

// TarFile writes one entry named name (a file, symlink or directory entry;
// a directory's contents are not included) for the local path p, then
// closes the tar. It returns the regular file bytes written.
func TarFile(w io.Writer, p, name string) (int64, error) {
	tw := tar.NewWriter(w)
	n, err := writeEntry(tw, p, name)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: not a regular file, directory or symlink", p)
	}
	return n, tw.Close()
}

// writeEntry writes the header (and content) of local path p as name. It
// returns -1 for skipped types.
func writeEntry(tw *tar.Writer, p, name string) (int64, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return 0, err
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(unixMode(fi.Mode())),
		ModTime: fi.ModTime(),
		Format:  tar.FormatPAX,
	}
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		// Size from the open file: it is what we will read.
		if fi, err = f.Stat(); err != nil {
			return 0, err
		}
		hdr.Typeflag = tar.TypeReg
		hdr.Size = fi.Size()
		hdr.ModTime = fi.ModTime()
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
		if err != nil {
			return n, fmt.Errorf("read %s: %w", p, err)
		}
		if n != hdr.Size {
			return n, fmt.Errorf("read %s: file shrank while archiving (%d of %d bytes)", p, n, hdr.Size)
		}
		return n, nil
	case fi.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name = strings.TrimSuffix(name, "/") + "/"
		return 0, tw.WriteHeader(hdr)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return 0, err
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return 0, tw.WriteHeader(hdr)
	}
	return -1, nil
}

// unixMode converts a Go FileMode to the permission and special bits of a
// tar header.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// goMode converts tar header mode bits to a FileMode (permissions and
// setuid/setgid/sticky).
func goMode(h int64) fs.FileMode {
	m := fs.FileMode(h) & fs.ModePerm
	if h&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if h&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if h&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// CleanName validates a tar entry name and returns it cleaned and relative
// ("." for the root itself). It rejects absolute names, ".." components and
// NUL bytes. A leading "./" is accepted.
func CleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: %q contains a NUL byte", ErrUnsafePath, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafePath, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: %q contains ..", ErrUnsafePath, name)
		}
	}
	c := path.Clean(name)
	if c == "" {
		c = "."
	}
	return c, nil
}

// ExtractTar extracts the uncompressed tar stream r into dest as
// ExtractTarWith does, trusting its modes and links (the guest agent
// extracting what the host pushed).
func ExtractTar(r io.Reader, dest string) (Stats, error) {
	return ExtractTarWith(r, dest, ExtractOptions{})
}

// ExtractTarWith extracts the uncompressed tar stream r into dest, which is
// created (with parents) if missing. It is safe against hostile archives:
// entries with absolute names or ".." are rejected, no existing symlink is
// ever followed (an entry whose parent path is a symlink is rejected, and an
// existing file, symlink or empty directory in the way of an entry is
// replaced, not written through), and all access goes through an os.Root
// for dest. Modes (permissions, setuid/setgid/sticky) and modification
// times are restored; owners are not (files belong to the caller).
// Devices, fifos and sockets are skipped. On error, what was extracted so
// far stays. See ExtractOptions for archives from an untrusted party.
// MaxUntrustedName bounds an entry's name in an archive not trusted
// (ExtractOptions.Untrusted): PATH_MAX.
const MaxUntrustedName = 4096

func ExtractTarWith(r io.Reader, dest string, opts ExtractOptions) (Stats, error) {
	var st Stats
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return st, err
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return st, err
	}
	defer root.Close()
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	counted := &countingReader{r: r}
	tr := tar.NewReader(counted)
	buf := make([]byte, 256<<10)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("%w: %w", ErrBadArchive, err)
		}
		st.Entries++
		if opts.MaxEntries > 0 && st.Entries > opts.MaxEntries {
			return st, fmt.Errorf("%w: more than %d", ErrTooManyEntries, opts.MaxEntries)
		}
		name, err := CleanName(hdr.Name)
		if err != nil {
			return st, err
		}
		// Each level of a name costs a walk from dest (prepareParent:
		// quadratic in its depth), and a PAX header may carry a 1 MiB
		// name of 500,000 levels: an archive not trusted gets no name a
		// path call could use past PATH_MAX.
		if opts.Untrusted && len(name) > MaxUntrustedName {
			return st, fmt.Errorf("%w: a name of %d bytes (more than %d)", ErrUnsafePath, len(name), MaxUntrustedName)
		}
		if opts.Filter != nil && name != "." {
			skip, err := opts.Filter(hdr, name)
			if err != nil {
				return st, err
			}
			if skip {
				continue
			}
		}
		mode := opts.mode(hdr.Mode, hdr.Typeflag == tar.TypeDir)
		if name == "." {
			// dest's own mode is the caller's choice when the archive
			// is not trusted.
			if hdr.Typeflag == tar.TypeDir && !opts.Untrusted {
				dirs = append(dirs, dirMeta{name, mode, hdr.ModTime})
			}
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
		default:
			st.skip(name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
			continue
		}
		if hdr.Typeflag == tar.TypeSymlink && opts.Untrusted {
			if why := unsafeLink(name, hdr.Linkname); why != "" {
				st.skip(name, why)
				continue
			}
		}
		if err := prepareParent(root, name); err != nil {
			return st, err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			fi, err := root.Lstat(name)
			switch {
			case err == nil && fi.IsDir():
			case err == nil:
				if err := root.Remove(name); err != nil {
					return st, fmt.Errorf("replace %s: %w", name, err)
				}
				fallthrough
			default:
				if err := root.Mkdir(name, 0o700); err != nil {
					return st, fmt.Errorf("create directory %s: %w", name, err)
				}
			}
			if opts.Owners {
				if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
					return st, fmt.Errorf("chown %s: %w", name, err)
				}
			}
			dirs = append(dirs, dirMeta{name, mode, hdr.ModTime})
			st.Dirs++
		case tar.TypeReg, tar.TypeRegA:
			// Create first, and clear the way only when something is
			// there: O_EXCL never follows or reuses what exists, and a
			// lookup that misses costs as much as the create in an
			// emulated guest's overlay.
			const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL | syscall.O_NOFOLLOW
			f, err := root.OpenFile(name, flags, 0o600)
			if errors.Is(err, fs.ErrExist) {
				if err := removeExisting(root, name); err != nil {
					return st, err
				}
				f, err = root.OpenFile(name, flags, 0o600)
			}
			if err != nil {
				return st, fmt.Errorf("create %s: %w", name, err)
			}
			var n int64
			if opts.CopyData != nil && !isPAXSparse(hdr) {
				n, err = opts.CopyData(f, counted.n, hdr.Size)
			} else {
				src := &readErr{r: &sparseGuard{tr: tr, in: counted, start: counted.n}}
				n, err = io.CopyBuffer(f, src, buf)
				if err != nil && src.err != nil {
					err = fmt.Errorf("%w: %w", ErrBadArchive, err)
				}
			}
			st.Bytes += n
			if err == nil && opts.Owners {
				err = f.Chown(hdr.Uid, hdr.Gid)
			}
			if err == nil {
				err = f.Chmod(mode)
			}
			if err == nil {
				err = futimes(f, hdr.ModTime)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return st, fmt.Errorf("write %s: %w", name, err)
			}
			st.Files++
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
				return st, fmt.Errorf("%w: symlink %s has an invalid target", ErrUnsafePath, name)
			}
			if err := removeExisting(root, name); err != nil {
				return st, err
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return st, fmt.Errorf("create symlink %s: %w", name, err)
			}
			if opts.Owners {
				if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
					return st, fmt.Errorf("chown %s: %w", name, err)
				}
			}
			if err := lutimes(root, name, hdr.ModTime); err != nil {
				return st, fmt.Errorf("set times of %s: %w", name, err)
			}
			st.Files++
		case tar.TypeLink:
			target, err := CleanName(hdr.Linkname)
			if err != nil || target == "." {
				return st, fmt.Errorf("%w: hard link %s -> %q", ErrUnsafePath, name, hdr.Linkname)
			}
			fi, err := root.Lstat(target)
			if err != nil {
				return st, fmt.Errorf("hard link %s: target %s: %w", name, target, err)
			}
			if !fi.Mode().IsRegular() {
				return st, fmt.Errorf("%w: hard link %s -> %s is not to a regular file", ErrUnsafePath, name, target)
			}
			if err := prepareParent(root, target); err != nil {
				return st, err
			}
			if err := removeExisting(root, name); err != nil {
				return st, err
			}
			if err := root.Link(target, name); err != nil {
				return st, fmt.Errorf("create hard link %s: %w", name, err)
			}
			st.Files++
		}
	}
	// Directory modes and times last, deepest first: creating entries
	// changes a directory's mtime, and a read-only directory would block
	// its own contents.
	slices.SortStableFunc(dirs, func(a, b dirMeta) int {
		return strings.Count(b.name, "/") - strings.Count(a.name, "/")
	})
	for _, d := range dirs {
		if err := root.Chmod(d.name, d.mode); err != nil {
			return st, fmt.Errorf("chmod %s: %w", d.name, err)
		}
		if !d.mtime.IsZero() {
			if err := root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
				return st, fmt.Errorf("set times of %s: %w", d.name, err)
			}
		}
	}
	return st, nil
}

// unsafeLink says why a symlink name -> target from an untrusted archive
// could lead out of the extracted tree ("" when it cannot). The target must
// be relative, may climb with leading ".." no higher than the tree's root
// (every parent of an entry is a real directory, see prepareParent), and
// must not use ".." after any other element: "l/.." climbs from wherever
// the symlink l points, which is not known from the name.
func unsafeLink(name, target string) string {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return "symlink with an invalid target"
	}
	if strings.HasPrefix(target, "/") {
		return "absolute symlink"
	}
	up, depth := 0, strings.Count(name, "/")
	climbing := true
	for _, el := range strings.Split(target, "/") {
		switch {
		case el == ".." && climbing:
			up++
		case el == "..":
			return "symlink with .. after another element"
		default:
			climbing = false
		}
	}
	if up > depth {
		return "symlink leading out of the exported tree"
	}
	return ""
}

// prepareParent makes sure every parent directory of name exists as a real
// directory inside root; it refuses to go through symlinks.
func prepareParent(root *os.Root, name string) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	cur := ""
	for _, el := range strings.Split(dir, "/") {
		if cur == "" {
			cur = el
		} else {
			cur += "/" + el
		}
		fi, err := root.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(cur, 0o755); err != nil {
				return fmt.Errorf("create directory %s: %w", cur, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrUnsafePath, cur, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s goes through symlink %s", ErrUnsafePath, name, cur)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: parent %s of %s is not a directory", ErrUnsafePath, cur, name)
		}
	}
	return nil
}

// removeExisting removes whatever non-directory (or empty directory) is at
// name, so the new entry replaces it instead of writing through it.
func removeExisting(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := root.Remove(name); err != nil {
		if fi.IsDir() {
			return fmt.Errorf("replace directory %s with a file: %w", name, err)
		}
		return fmt.Errorf("replace %s: %w", name, err)
	}
	return nil
}

// readErr remembers a read error, to tell a broken archive from a failed
// write.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// lutimes sets the times of the symlink name itself, through a directory
// fd opened within root.
func lutimes(root *os.Root, name string, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	d, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	rc, err := d.SyscallConn()
	if err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.UtimesNanoAt(int(fd), path.Base(name), ts, unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		return err
	}
	return serr
}

func futimes(f *os.File, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.UtimesNanoAt(int(fd), "", ts, unix.AT_EMPTY_PATH)
	}); err != nil {
		return err
	}
	return serr
}

// OpenArchive opens a local tar archive, gzip-compressed or not (detected
// by its magic bytes, whatever the file name: .tar, .tar.gz, .tgz), and
// returns the uncompressed tar stream: pass it to tar.NewReader, or as is to
// agentapi.Client.PushTar. Closing it closes the file.
func OpenArchive(p string) (io.ReadCloser, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	r, err := Decompress(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return readCloser{r, closerFunc(func() error {
		if c, ok := r.(io.Closer); ok {
			_ = c.Close()
		}
		return f.Close()
	})}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closerFunc func() error

func (c closerFunc) Close() error { return c() }

// Decompress returns r itself (buffered) if it is not gzip data, or a gzip
// reader over it if it is, detected by the gzip magic bytes.
func Decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("read gzip header: %w", err)
		}
		return zr, nil
	}
	return br, nil
}

// countingReader counts the archive bytes read.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Seek moves relative to the current position when the stream is an
// io.Seeker (the tar reader then skips an entry's content without reading
// it, see ExtractOptions.CopyData), and fails otherwise, which makes the
// tar reader read instead.
func (c *countingReader) Seek(off int64, whence int) (int64, error) {
	s, ok := c.r.(io.Seeker)
	if !ok || whence != io.SeekCurrent {
		return -1, errors.ErrUnsupported
	}
	p, err := s.Seek(off, io.SeekCurrent)
	if err == nil {
		c.n += off
	}
	return p, err
}

// sparseGuard fails an entry that yields more data than the archive holds
// for it: the tar reader expands sparse holes (GNU and PAX formats alike),
// so a few bytes of archive could otherwise fill a disk.
type sparseGuard struct {
	tr    io.Reader
	in    *countingReader
	start int64
	out   int64
}

func (g *sparseGuard) Read(p []byte) (int, error) {
	n, err := g.tr.Read(p)
	g.out += int64(n)
	// 512: the tar reader may not yet have read the last partial block.
	if g.out > g.in.n-g.start+512 {
		return n, fmt.Errorf("%w: a sparse file (not supported)", ErrBadArchive)
	}
	return n, err
}

// ProcessUmask returns the process's file mode creation mask, read from
// /proc/self/status: setting and restoring it with umask(2) would change it
// for every other goroutine meanwhile. Without /proc it assumes 022.
func ProcessUmask() fs.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return fs.FileMode(m) & fs.ModePerm
			}
		}
	}
	return 0o022
}
