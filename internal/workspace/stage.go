package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// A seed directory becomes the tree mke2fs -d reads. Streaming it through
// tar (TarDir, then ExtractTar into the tree) copies every byte once more
// before mke2fs copies it into the image: for 196 MiB in 1,000 files
// ~0.5 s of a quiet 2-core host and over 1 s of a loaded one, most of a
// seeded create's baseline build. stageDir makes the same tree with hard
// links where a link reads, for mke2fs, exactly as the copy would: ~20 ms.

// DirSource is the tar stream of a seed directory (OpenSource), started on
// its first read. A baseline build on the host stages the directory
// itself instead (stageDir) and never reads the stream.
type DirSource struct {
	dir    string
	mu     sync.Mutex
	pr     *io.PipeReader
	closed bool
}

func newDirSource(dir string) *DirSource { return &DirSource{dir: dir} }

// Read reads the directory's tar stream (tarutil.TarDir).
func (s *DirSource) Read(p []byte) (int, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	if s.pr == nil {
		pr, pw := io.Pipe()
		s.pr = pr
		go func() {
			_, _, err := tarutil.TarDir(pw, s.dir)
			pw.CloseWithError(err)
		}()
	}
	pr := s.pr
	s.mu.Unlock()
	return pr.Read(p)
}

// Close ends the stream (and the walk feeding it, if it started).
func (s *DirSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.pr != nil {
		return s.pr.Close()
	}
	return nil
}

// stageDir mirrors the directory src into the empty directory dest as
// TarDir followed by ExtractTar would: directories, regular files and
// symlinks (never followed) with their permissions (setuid, setgid and
// sticky bits included) and modification times; devices, fifos and
// sockets left out; nothing owned by anyone but the caller. A regular
// file is hard-linked instead of copied when mke2fs -d cannot tell the
// link from a copy: it belongs to the caller (uid and the gid a new file
// gets), has no other link and no extended attributes (a copy has none:
// no file capabilities, no ACLs), and dest is on its file system. The
// file is opened once and linked or copied through that descriptor, so
// what is checked is what is staged. Without links every file is copied.
// It returns what ExtractTar would count, and the files it linked: a
// linked file is still the caller's, so what a later reader (mke2fs) gets
// is only what was counted if it is unchanged then (linkedFiles.changed).
func stageDir(ctx context.Context, src, dest string, links bool, maxBytes int64) (tarutil.Stats, linkedFiles, error) {
	var st tarutil.Stats
	fi, err := os.Lstat(src)
	if err != nil {
		return st, nil, err
	}
	if !fi.IsDir() {
		return st, nil, fmt.Errorf("%s: not a directory", src)
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		return st, nil, err
	}
	defer root.Close()
	s := stager{ctx: ctx, root: root, dest: dest, uid: os.Geteuid(), gid: os.Getegid(), links: links, maxBytes: maxBytes}
	if di, err := os.Stat(dest); err == nil && di.Mode()&os.ModeSetgid != 0 {
		if sys, ok := di.Sys().(*unix.Stat_t); ok {
			s.gid = int(sys.Gid) // new files take the directory's group
		}
	}
	if err := s.dir("."); err != nil {
		return s.st, s.linked, err
	}
	// Directory modes and times last, deepest first (as ExtractTar):
	// creating entries changes a directory's mtime, and a read-only
	// directory would refuse its own contents.
	slices.SortStableFunc(s.dirs, func(a, b stagedDir) int {
		return strings.Count(b.name, "/") - strings.Count(a.name, "/")
	})
	for _, d := range s.dirs {
		p := filepath.Join(dest, d.name)
		if err := os.Chmod(p, d.mode); err != nil {
			return s.st, s.linked, err
		}
		if err := os.Chtimes(p, d.fi.ModTime(), d.fi.ModTime()); err != nil {
			return s.st, s.linked, err
		}
	}
	return s.st, s.linked, nil
}

// linkedFiles are the staged files that are hard links to the source's,
// each with its size and times once linked.
type linkedFiles []linkedFile

type linkedFile struct {
	path       string
	size       int64
	mtim, ctim unix.Timespec
}

// changed reports whether any linked file was written to (or is gone)
// since it was staged: its size or times differ.
func (l linkedFiles) changed() bool {
	for _, f := range l {
		var st unix.Stat_t
		if unix.Lstat(f.path, &st) != nil || st.Size != f.size || st.Mtim != f.mtim || st.Ctim != f.ctim {
			return true
		}
	}
	return false
}

type stager struct {
	ctx      context.Context
	root     *os.Root
	dest     string
	uid, gid int
	links    bool  // hard links work from src to dest (off after EXDEV/EPERM)
	maxBytes int64 // file content past which staging stops (0: no bound)
	st       tarutil.Stats
	linked   linkedFiles
	dirs     []stagedDir
}

type stagedDir struct {
	name string
	mode os.FileMode
	fi   os.FileInfo
}

// dir stages the entries of the directory rel (relative to the source).
func (s *stager) dir(rel string) error {
	d, err := s.root.Open(rel)
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		name := path.Join(rel, e.Name())
		fi, err := s.root.Lstat(name)
		if err != nil {
			return err
		}
		out := filepath.Join(s.dest, filepath.FromSlash(name))
		switch {
		case fi.IsDir():
			if err := os.Mkdir(out, 0o700); err != nil {
				return err
			}
			s.dirs = append(s.dirs, stagedDir{name, goMode(fi), fi})
			s.st.Dirs++
			if err := s.dir(name); err != nil {
				return err
			}
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := s.root.Readlink(name)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, out); err != nil {
				return err
			}
			ts := []unix.Timespec{unix.NsecToTimespec(fi.ModTime().UnixNano()), unix.NsecToTimespec(fi.ModTime().UnixNano())}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, out, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("set times of %s: %w", name, err)
			}
			s.st.Files++
		case fi.Mode().IsRegular():
			if err := s.file(name, out); err != nil {
				return err
			}
		}
		// Devices, fifos and sockets: left out, as TarDir leaves them.
	}
	return nil
}

// ErrStageTooLarge: the source holds more file content than the staging
// was bounded to (StageDir's maxBytes).
var ErrStageTooLarge = errors.New("push source larger than the workspace disk")

// goMode is the mode ExtractTar gives an entry of fi's permissions.
func goMode(fi os.FileInfo) os.FileMode {
	return fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

// file stages the regular file name at out: a hard link when it reads as
// a copy would (see stageDir), else a copy.
func (s *stager) file(name, out string) error {
	// O_NONBLOCK: should a fifo have taken the file's place since the
	// Lstat, the open must not wait for a writer (fstat refuses it next).
	f, err := s.root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return err
	}
	if fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // no longer a regular file: left out
	}
	s.st.Files++
	s.st.Bytes += fst.Size
	if s.maxBytes > 0 && s.st.Bytes > s.maxBytes {
		return fmt.Errorf("%w: more than %d bytes", ErrStageTooLarge, s.maxBytes)
	}
	if s.links && int(fst.Uid) == s.uid && int(fst.Gid) == s.gid && fst.Nlink == 1 && !hasXattrs(f) {
		// Link the inode that was opened and checked, not the name.
		err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, out, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			// Its state once linked (the link itself changed its ctime);
			// the bytes counted are the ones it had when opened.
			var now unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &now); err != nil {
				return err
			}
			if now.Size != fst.Size || now.Mtim != fst.Mtim {
				now.Ctim = unix.Timespec{} // changed already: changed() says so
			}
			s.linked = append(s.linked, linkedFile{out, fst.Size, fst.Mtim, now.Ctim})
			return nil
		}
		if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EMLINK) {
			return fmt.Errorf("link %s: %w", name, err)
		}
		s.links = false // another file system, or no links here: copy
	}
	return copyStaged(f, out, fst)
}

// copyStaged copies the open regular file f (of stat fst) to the new file
// out with its permissions and modification time.
func copyStaged(f *os.File, out string, fst unix.Stat_t) error {
	w, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(w, f)
	if err == nil && n != fst.Size {
		err = fmt.Errorf("file changed size while staging (%d of %d bytes)", n, fst.Size)
	}
	if err == nil {
		err = unix.Fchmod(int(w.Fd()), fst.Mode&0o7777)
	}
	if err == nil {
		ts := []unix.Timespec{fst.Mtim, fst.Mtim}
		err = unix.UtimesNanoAt(int(w.Fd()), "", ts, unix.AT_EMPTY_PATH)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Base(out), err)
	}
	return nil
}

// hasXattrs reports whether f has extended attributes (a file system
// without them: none).
func hasXattrs(f *os.File) bool {
	n, err := unix.Flistxattr(int(f.Fd()), nil)
	return err == nil && n > 0
}
