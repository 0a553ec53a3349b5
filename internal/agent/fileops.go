package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Single-file operations (list, read, write); see agentapi/fileops.go for
// the protocol.

func (s *Agent) fileOpRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+agentapi.PathFilesList, s.handleFilesList)
	mux.HandleFunc("GET "+agentapi.PathFilesRead, s.handleFilesRead)
	mux.HandleFunc("POST "+agentapi.PathFilesWrite, s.handleFilesWrite)
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return agentapi.FileTypeFile
	case m.IsDir():
		return agentapi.FileTypeDir
	case m&fs.ModeSymlink != 0:
		return agentapi.FileTypeSymlink
	}
	return agentapi.FileTypeOther
}

func fileEntry(p string, fi fs.FileInfo, real string) agentapi.FileEntry {
	e := agentapi.FileEntry{Path: p, Type: fileType(fi.Mode()), Mode: uint32(fi.Mode().Perm())}
	if fi.Mode().IsRegular() {
		e.SizeBytes = fi.Size()
	}
	if e.Type == agentapi.FileTypeSymlink {
		e.LinkTarget, _ = os.Readlink(real)
	}
	return e
}

func notFoundOr(err error, p string) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errorf(errdefs.ErrNotFound, "%s does not exist", p)
	}
	if errors.Is(err, syscall.ENOTDIR) {
		return errorf(errdefs.ErrInvalidArgument, "%s: a parent is not a directory", p)
	}
	return categorize(nil, err, "%s", p)
}

func (s *Agent) handleFilesList(w http.ResponseWriter, r *http.Request) {
	p, ok := s.absPath(w, r, "path")
	if !ok || !s.confined(w, r, p, true) {
		return
	}
	recursive := r.URL.Query().Get("recursive") == "true"
	// The listed path itself is followed (a symlink to a directory lists
	// that directory); nothing below it is.
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		s.fail(w, notFoundOr(err, p))
		return
	}
	fi, err := os.Stat(real)
	if err != nil {
		s.fail(w, notFoundOr(err, p))
		return
	}
	l := agentapi.FileList{Path: p, Entries: []agentapi.FileEntry{}}
	if !fi.IsDir() {
		l.Entries = append(l.Entries, fileEntry(p, fi, real))
		writeJSON(w, http.StatusOK, l)
		return
	}
	add := func(rel string, fi fs.FileInfo) bool {
		if len(l.Entries) >= agentapi.MaxListEntries {
			l.Truncated = true
			return false
		}
		l.Entries = append(l.Entries, fileEntry(path.Join(p, rel), fi, filepath.Join(real, rel)))
		return true
	}
	if !recursive {
		des, err := os.ReadDir(real)
		if err != nil {
			s.fail(w, notFoundOr(err, p))
			return
		}
		for _, de := range des {
			fi, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			if !add(de.Name(), fi) {
				break
			}
		}
		writeJSON(w, http.StatusOK, l)
		return
	}
	// WalkDir visits in lexical order and never follows symlinks.
	err = filepath.WalkDir(real, func(fp string, de fs.DirEntry, err error) error {
		if fp == real {
			return err
		}
		if err != nil {
			return nil // unreadable subtree: list what can be read
		}
		fi, err := de.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(real, fp)
		if !add(rel, fi) {
			return filepath.SkipAll
		}
		return nil
	})
	if err != nil {
		s.fail(w, notFoundOr(err, p))
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Agent) handleFilesRead(w http.ResponseWriter, r *http.Request) {
	p, ok := s.absPath(w, r, "path")
	if !ok || !s.confined(w, r, p, true) {
		return
	}
	max, err := strconv.ParseInt(r.URL.Query().Get("max_bytes"), 10, 64)
	if err != nil || max < 1 || max > agentapi.MaxReadBytes {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "max_bytes must be 1..%d", agentapi.MaxReadBytes))
		return
	}
	f, err := os.Open(p)
	if err != nil {
		s.fail(w, notFoundOr(err, p))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.fail(w, notFoundOr(err, p))
		return
	}
	if fi.IsDir() {
		s.fail(w, errdefs.New(errdefs.ErrInvalidArgument, "list it with `pyro workspace file list`", "%s is a directory", p))
		return
	}
	if !fi.Mode().IsRegular() {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "%s is not a regular file", p))
		return
	}
	// One byte more than asked tells a truncated read from an exact one.
	buf, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		s.fail(w, categorize(nil, err, "read %s", p))
		return
	}
	fc := agentapi.FileContent{Path: p, SizeBytes: fi.Size(), Content: buf}
	if int64(len(buf)) > max {
		fc.Content, fc.Truncated = buf[:max], true
	}
	writeJSON(w, http.StatusOK, fc)
}

// maxWriteRequestBytes bounds a write request's JSON: base64 content plus
// names and fields.
const maxWriteRequestBytes = agentapi.MaxWriteBytes/3*4 + agentapi.MaxWriteFiles*(4<<10+256) + 64<<10

// checkAbs validates an absolute path from a request body.
func checkAbs(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", errorf(errdefs.ErrInvalidArgument, "path %q is not absolute", p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errorf(errdefs.ErrInvalidArgument, "path contains a NUL byte")
	}
	return path.Clean(p), nil
}

// pendingWrite is one checked file of a write request.
type pendingWrite struct {
	req    agentapi.FileWrite
	target string // symlinks resolved: what gets replaced or removed
	exists bool
	mode   fs.FileMode
	tmp    string
	res    agentapi.FileWritten
}

func (s *Agent) handleFilesWrite(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWriteRequestBytes+1))
	if err != nil || len(body) > maxWriteRequestBytes {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "write request unreadable or larger than %d bytes", maxWriteRequestBytes))
		return
	}
	var req agentapi.FileWriteRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "decode write request: %v", err))
		return
	}
	res, err := s.writeFiles(req)
	if err != nil {
		s.log.Debug("files write failed", "err", err)
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// writeFiles checks everything, stages every new content in a temporary
// file beside its target, and only then renames (or removes) them all.
func (s *Agent) writeFiles(req agentapi.FileWriteRequest) (agentapi.FileWriteResult, error) {
	if len(req.Files) == 0 || len(req.Files) > agentapi.MaxWriteFiles {
		return agentapi.FileWriteResult{}, errorf(errdefs.ErrInvalidArgument, "a write names 1..%d files", agentapi.MaxWriteFiles)
	}
	var total int64
	seen := map[string]bool{}
	pend := make([]*pendingWrite, 0, len(req.Files))
	for _, f := range req.Files {
		p, err := checkAbs(f.Path)
		if err != nil {
			return agentapi.FileWriteResult{}, err
		}
		total += int64(len(f.Content))
		if total > agentapi.MaxWriteBytes {
			return agentapi.FileWriteResult{}, errorf(errdefs.ErrInvalidArgument, "content larger than %d bytes", agentapi.MaxWriteBytes)
		}
		pw, err := checkWrite(req.Within, p, f)
		if err != nil {
			return agentapi.FileWriteResult{}, err
		}
		// Two names of one file (directly and through a symlink) would
		// race each other's rename.
		if seen[pw.target] {
			return agentapi.FileWriteResult{}, errorf(errdefs.ErrInvalidArgument, "%s is named twice", pw.target)
		}
		seen[pw.target] = true
		pend = append(pend, pw)
	}
	var created []string // directories made for new files, undone on failure
	undo := func() {
		for _, pw := range pend {
			if pw.tmp != "" {
				_ = os.Remove(pw.tmp)
			}
		}
		for i := len(created) - 1; i >= 0; i-- {
			_ = os.Remove(created[i])
		}
	}
	for _, pw := range pend {
		if pw.req.Delete || !pw.res.Changed {
			continue
		}
		dirs, err := mkdirs(filepath.Dir(pw.target))
		created = append(created, dirs...)
		if err == nil {
			pw.tmp, err = stage(filepath.Dir(pw.target), pw.req.Content, pw.mode)
		}
		if err != nil {
			undo()
			return agentapi.FileWriteResult{}, writeErr(err, pw.req.Path)
		}
	}
	out := agentapi.FileWriteResult{Files: make([]agentapi.FileWritten, 0, len(pend))}
	var firstErr error
	for _, pw := range pend {
		switch {
		case pw.req.Delete:
			if err := os.Remove(pw.target); err != nil && firstErr == nil {
				firstErr = writeErr(err, pw.req.Path)
			}
		case pw.tmp != "":
			if err := os.Rename(pw.tmp, pw.target); err != nil && firstErr == nil {
				firstErr = writeErr(err, pw.req.Path)
			}
		}
		out.Files = append(out.Files, pw.res)
	}
	s.syncWorkspace()
	if firstErr != nil {
		undo()
		return agentapi.FileWriteResult{}, firstErr
	}
	return out, nil
}

// checkWrite checks one file of a write against the filesystem and its
// expectation, and works out whether it changes anything.
func checkWrite(within, p string, f agentapi.FileWrite) (*pendingWrite, error) {
	if err := confinedTo(within, p, true); err != nil {
		return nil, err
	}
	pw := &pendingWrite{req: f, target: resolveExisting(p), mode: 0o644}
	if f.Mode != 0 {
		pw.mode = fs.FileMode(f.Mode).Perm()
	}
	pw.res = agentapi.FileWritten{Path: p}
	fi, err := os.Lstat(pw.target)
	switch {
	case err == nil && fi.IsDir():
		return nil, errorf(errdefs.ErrInvalidArgument, "%s is a directory", p)
	case err == nil && !fi.Mode().IsRegular():
		return nil, errorf(errdefs.ErrInvalidArgument, "%s is not a regular file", p)
	case err == nil:
		pw.exists, pw.mode = true, fi.Mode().Perm()
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, syscall.ENOTDIR):
		return nil, errorf(errdefs.ErrInvalidArgument, "%s: a parent is not a directory", p)
	default:
		return nil, categorize(nil, err, "%s", p)
	}
	var sum string
	same := false
	if pw.exists {
		var err error
		if sum, same, err = compare(pw.target, f.Content); err != nil {
			return nil, categorize(nil, err, "read %s", p)
		}
	}
	if f.ExpectSHA256 != nil {
		switch want := *f.ExpectSHA256; {
		case want == "" && pw.exists:
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "read it again and retry", "%s exists (it was created meanwhile)", p)
		case want != "" && !pw.exists:
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "read it again and retry", "%s no longer exists", p)
		case want != "" && want != sum:
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "read it again and retry", "%s changed since it was read", p)
		}
	}
	if f.Delete {
		if !pw.exists {
			return nil, errorf(errdefs.ErrNotFound, "%s does not exist", p)
		}
		pw.res.Changed, pw.res.Deleted = true, true
		return pw, nil
	}
	pw.res.BytesWritten = int64(len(f.Content))
	pw.res.Changed = !pw.exists || !same
	pw.res.Created = !pw.exists
	return pw, nil
}

// compare returns the hex SHA-256 of the file at p and whether its content
// equals b.
func compare(p string, b []byte) (string, bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	h := sha256.New()
	eq := &eqWriter{want: b, same: true}
	if _, err := io.Copy(io.MultiWriter(h, eq), f); err != nil {
		return "", false, err
	}
	return hex.EncodeToString(h.Sum(nil)), eq.same && eq.off == len(b), nil
}

// eqWriter compares what is written with want.
type eqWriter struct {
	want []byte
	off  int
	same bool
}

func (e *eqWriter) Write(p []byte) (int, error) {
	if e.same {
		if e.off+len(p) > len(e.want) || !bytes.Equal(e.want[e.off:e.off+len(p)], p) {
			e.same = false
		}
	}
	e.off += len(p)
	return len(p), nil
}

// mkdirs creates dir and its missing parents, returning those it created
// (outermost first).
func mkdirs(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || d == "/" {
			break
		}
		missing = append([]string{d}, missing...)
	}
	var made []string
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil {
			return made, err
		}
		made = append(made, d)
	}
	return made, nil
}

// stage writes content to a new temporary file in dir.
func stage(dir string, content []byte, mode fs.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, ".pyro-write-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func writeErr(err error, p string) error {
	switch {
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EEXIST):
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "write %s", p)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EROFS),
		errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "write %s", p)
	}
	return fmt.Errorf("write %s: %w", p, err)
}
