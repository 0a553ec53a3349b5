package agent

import (
	"bufio"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// syncFS flushes the filesystem holding p to its disk (syncfs), so data
// written so far survives a kill of the VMM. Errors (p missing) are ignored.
func syncFS(p string) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
	if err != nil {
		return
	}
	_ = unix.Syncfs(fd)
	_ = unix.Close(fd)
}

// syncWorkspace is syncFS of the workspace directory.
func (s *Agent) syncWorkspace() { syncFS(s.workspaceDir) }

// confined checks, when the request names a "within" directory, that p
// resolves (symlinks followed, as far as it exists) to within or below it,
// so that a symlink inside /workspace cannot lead a push or pull out of it.
// Without followLast, p's last element is taken as it is (a pull archives
// a symlink as a link, it does not follow it).
func (s *Agent) confined(w http.ResponseWriter, r *http.Request, p string, followLast bool) bool {
	if err := confinedTo(r.URL.Query().Get("within"), p, followLast); err != nil {
		s.fail(w, err)
		return false
	}
	return true
}

// confinedTo is confined's check: nil when within is empty or p resolves
// into it, else invalid_argument.
func confinedTo(within, p string, followLast bool) error {
	if within == "" {
		return nil
	}
	root, err := filepath.EvalSymlinks(within)
	if err != nil {
		return errorf(errdefs.ErrInvalidArgument, "%s: %v", within, err)
	}
	resolved := resolveExisting(p)
	if !followLast && p != "/" {
		resolved = filepath.Join(resolveExisting(filepath.Dir(p)), filepath.Base(p))
	}
	if resolved != root && !strings.HasPrefix(resolved, root+"/") {
		return errorf(errdefs.ErrInvalidArgument, "%s resolves to %s, outside %s", p, resolved, within)
	}
	return nil
}

// resolveExisting follows symlinks in the longest existing prefix of p and
// appends the rest unchanged.
func resolveExisting(p string) string {
	rest := ""
	for cur := p; ; cur = filepath.Dir(cur) {
		if real, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(real, rest)
		}
		if cur == "/" {
			return p
		}
		rest = filepath.Join(filepath.Base(cur), rest)
	}
}

// absPath validates an absolute path query parameter.
func (s *Agent) absPath(w http.ResponseWriter, r *http.Request, key string) (string, bool) {
	p := r.URL.Query().Get(key)
	if p == "" {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "missing %s parameter", key))
		return "", false
	}
	if !path.IsAbs(p) {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "%s %q is not an absolute path", key, p))
		return "", false
	}
	for i := 0; i < len(p); i++ {
		if p[i] == 0 {
			s.fail(w, errorf(errdefs.ErrInvalidArgument, "%s contains a NUL byte", key))
			return "", false
		}
	}
	return path.Clean(p), true
}

func (s *Agent) handleFilesPush(w http.ResponseWriter, r *http.Request) {
	s.push(w, r, func(dest string) (tarutil.Stats, error) { return tarutil.ExtractTar(r.Body, dest) })
}

// push checks the request's dest (absolute, confined, a directory if it
// exists), runs extract into it, makes it durable and replies with what
// was extracted.
func (s *Agent) push(w http.ResponseWriter, r *http.Request, extract func(dest string) (tarutil.Stats, error)) {
	dest, ok := s.absPath(w, r, "dest")
	if ok && !s.confined(w, r, dest, true) {
		return
	}
	if !ok {
		return
	}
	if fi, err := os.Stat(dest); err == nil && !fi.IsDir() {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "dest %s exists and is not a directory", dest))
		return
	}
	st, err := extract(dest)
	syncFS(dest)
	if dest != s.workspaceDir {
		s.syncWorkspace()
	}
	if err != nil {
		cat := error(nil)
		switch {
		case errors.Is(err, tarutil.ErrUnsafePath), errors.Is(err, tarutil.ErrBadArchive),
			errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.EEXIST),
			errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP):
			cat = errdefs.ErrInvalidArgument
		case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EROFS),
			errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			cat = errdefs.ErrFailedPrecondition
		}
		s.log.Debug("files push failed", "dest", dest, "err", err)
		s.fail(w, categorize(cat, err, "push into %s (after %d files, %d dirs)", dest, st.Files, st.Dirs))
		return
	}
	s.log.Debug("files push", "dest", dest, "files", st.Files, "dirs", st.Dirs, "bytes", st.Bytes)
	writeJSON(w, http.StatusOK, agentapi.PushResult{Files: st.Files, Dirs: st.Dirs, Bytes: st.Bytes, Dest: dest})
}

// countingWriter records whether anything was written, so an error before
// the first byte can still become a proper error reply.
type countingWriter struct {
	w http.ResponseWriter
	b *bufio.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.b == nil {
		c.w.Header().Set("Content-Type", "application/x-tar")
		c.w.WriteHeader(http.StatusOK)
		c.b = bufio.NewWriterSize(c.w, 64<<10)
	}
	n, err := c.b.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *Agent) handleFilesPull(w http.ResponseWriter, r *http.Request) {
	p, ok := s.absPath(w, r, "path")
	if !ok || !s.confined(w, r, p, false) {
		return
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		s.fail(w, errorf(errdefs.ErrNotFound, "%s does not exist", p))
		return
	}
	if err != nil {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "%v", err))
		return
	}
	cw := &countingWriter{w: w}
	switch {
	case fi.IsDir():
		w.Header().Set(agentapi.HeaderKind, agentapi.KindDir)
		_, _, err = tarutil.TarDir(cw, p)
	case fi.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0:
		w.Header().Set(agentapi.HeaderKind, agentapi.KindFile)
		_, err = tarutil.TarFile(cw, p, filepath.Base(p))
	default:
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "%s is not a regular file, directory or symlink", p))
		return
	}
	if err == nil && cw.b != nil {
		err = cw.b.Flush()
	}
	if err != nil {
		s.log.Debug("files pull failed", "path", p, "err", err)
		if cw.b == nil {
			w.Header().Del(agentapi.HeaderKind)
			cat := error(nil)
			if errors.Is(err, fs.ErrNotExist) {
				cat = errdefs.ErrNotFound
			}
			s.fail(w, categorize(cat, err, "pull %s", p))
			return
		}
		// Mid-stream: end the response without the tar's end marker.
		panic(http.ErrAbortHandler)
	}
}
