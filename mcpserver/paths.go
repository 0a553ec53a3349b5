package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Host paths named by the model (seed_path, source_path, a secret's
// file_path, output_path) are confined to allowed roots: the client's MCP
// roots when it offers them, plus the directories the server was started
// with (--allow-path, default its working directory). The CLI and SDK are
// the user's own hand and stay unconfined; only this package confines.
//
// Resolution goes through os.Root (openat2 RESOLVE_BENEATH semantics):
// no "..", no symlink, no magic link can leave the root. The SDK takes
// paths, not descriptors, so each kind hands it a path that cannot be
// redirected afterwards, or is re-checked:
//   - a secret file is read here, bounded, from the descriptor os.Root
//     opened, and the SDK reads that content back through a sealed memfd
//     (/proc/self/fd/N): nothing is resolved by name again.
//   - an output path's parent is opened beneath the root and the SDK
//     writes beneath /proc/self/fd/N/NAME: the parent is pinned by the
//     descriptor, so a directory swapped in later cannot redirect it.
//   - a seed or sync source is handed as the real (symlink-free) path of
//     the descriptor os.Root opened, after checking that this path still
//     names the same file. The SDK records the path in the workspace, so a
//     /proc/self/fd path would be meaningless there. The window between
//     that check and the SDK's own open needs a local writer racing inside
//     an allowed root; the model cannot be one, since its only host write
//     (workspace_export) creates new paths and never replaces one. Inside
//     the tree the SDK walks without following symlinks.

// maxSecretFileBytes bounds a secret read from a host file.
const maxSecretFileBytes = 64 << 10

// pseudoFS are never roots, nor anything beneath them: they hold the
// host's processes, devices and kernel state.
var pseudoFS = []string{"/proc", "/sys", "/dev"}

// rootsInputID names the roots/list input request of a tool call.
const rootsInputID = "roots"

// errNeedRoots asks addTool to fetch the client's roots (an input request)
// and call the handler again.
var errNeedRoots = errors.New("client roots needed")

// confinement holds the allowed roots of a server and the client roots of
// each session.
type confinement struct {
	allow       []root
	clientRoots bool // whether the client's roots count

	mu      sync.Mutex
	session map[*mcp.ServerSession][]root // known client roots
}

// root is an allowed directory as it was named (absolute, clean) and as it
// resolves (symlink-free). Paths are matched against either, so that a
// path given through a symlinked working directory still matches; what
// they resolve to is checked against the real one.
type root struct{ given, real string }

func newConfinement(dirs []string, clientRoots bool) (*confinement, error) {
	c := &confinement{clientRoots: clientRoots, session: map[*mcp.ServerSession][]root{}}
	if len(dirs) == 0 {
		wd, err := os.Getwd()
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "pass --allow-path DIR", "cannot find the working directory to allow")
		}
		if !defaultRootOK(wd) {
			// Clients often start servers in "/" or the home directory;
			// allowing it by default would hand the model ~/.ssh and let
			// export create ~/.bash_profile. Only client roots count then.
			return c, nil
		}
		dirs = []string{wd}
	}
	for _, d := range dirs {
		root, err := rootDir(d)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "pass an existing directory outside /proc, /sys and /dev to --allow-path", "cannot allow %q", d)
		}
		c.allow = append(c.allow, root)
	}
	return c, nil
}

// defaultRootOK reports whether the working directory wd may be the
// implicit root: not "/", not the home directory nor an ancestor of it
// (by name or by real path). --allow-path may still name those.
func defaultRootOK(wd string) bool {
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/"
	}
	for _, w := range []string{wd, realOr(wd)} {
		for _, h := range []string{filepath.Clean(home), realOr(home)} {
			if w == "/" || within(w, h) {
				return false
			}
		}
	}
	return true
}

// realOr returns p's real path, or p itself when it does not resolve.
func realOr(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// rootDir checks that d can be a root: an existing directory whose real
// path is not a pseudo file system.
func rootDir(d string) (root, error) {
	abs, err := filepath.Abs(d)
	if err != nil {
		return root{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return root{}, err
	}
	if inPseudoFS(abs) || inPseudoFS(real) {
		return root{}, fmt.Errorf("%s is a pseudo file system", real)
	}
	st, err := os.Stat(real)
	if err != nil {
		return root{}, err
	}
	if !st.IsDir() {
		return root{}, fmt.Errorf("%s is not a directory", real)
	}
	return root{given: abs, real: real}, nil
}

func inPseudoFS(p string) bool {
	for _, ps := range pseudoFS {
		if within(ps, p) {
			return true
		}
	}
	return false
}

// within reports whether p is root or lies beneath it (both clean and
// absolute).
func within(root, p string) bool {
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// sessionStarted forgets a session's roots when it ends.
func (c *confinement) sessionStarted(_ context.Context, req *mcp.InitializedRequest) {
	ss := req.Session
	go func() {
		_ = ss.Wait()
		c.mu.Lock()
		delete(c.session, ss)
		c.mu.Unlock()
	}()
}

// rootsChanged drops a session's known roots; the next call that names a
// host path asks the client again.
func (c *confinement) rootsChanged(_ context.Context, req *mcp.RootsListChangedRequest) {
	c.mu.Lock()
	delete(c.session, req.Session)
	c.mu.Unlock()
}

// learn records the roots a client sent with a retried call.
func (c *confinement) learn(req *mcp.CallToolRequest) {
	if req == nil || req.Params == nil || req.Session == nil || !c.clientRoots {
		return
	}
	r, ok := req.Params.InputResponses[rootsInputID].(*mcp.ListRootsResult)
	if !ok {
		return
	}
	var dirs []root
	for _, cr := range r.Roots {
		if cr == nil {
			continue
		}
		u, err := url.Parse(cr.URI)
		if err != nil || u.Scheme != "file" || (u.Host != "" && u.Host != "localhost") || !filepath.IsAbs(u.Path) {
			continue // only local file roots with a path mean a host directory ("" would be the cwd)
		}
		if d, err := rootDir(u.Path); err == nil {
			dirs = append(dirs, d)
		}
	}
	if dirs == nil {
		dirs = []root{}
	}
	c.mu.Lock()
	c.session[req.Session] = dirs
	c.mu.Unlock()
}

// roots returns the roots allowed for this call, or errNeedRoots when the
// client offers roots that the server does not know yet.
func (c *confinement) roots(req *mcp.CallToolRequest) ([]root, error) {
	if req == nil || req.Session == nil || !c.clientRoots {
		return c.allow, nil
	}
	ip := req.Session.InitializeParams()
	if ip == nil || ip.Capabilities == nil || ip.Capabilities.RootsV2 == nil {
		return c.allow, nil
	}
	c.mu.Lock()
	client, known := c.session[req.Session]
	c.mu.Unlock()
	if !known {
		return nil, errNeedRoots
	}
	return append(append([]root{}, c.allow...), client...), nil
}

// rootsInputRequest is the result that asks the client for its roots. The
// go-sdk sends it to clients that speak input requests and, for older
// clients, calls roots/list itself and retries the handler.
func rootsInputRequest() *mcp.CallToolResult {
	return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{rootsInputID: &mcp.ListRootsParams{}}}
}

func outsideError(arg, p string, roots []root) error {
	var names []string
	for _, r := range roots {
		names = append(names, r.real)
	}
	where := "allowed roots: " + strings.Join(names, ", ")
	if len(names) == 0 {
		where = "no allowed roots (the working directory is / or the home directory)"
	}
	return errdefs.New(errdefs.ErrFailedPrecondition,
		where+"; name a path beneath one of them, add the directory to the client's roots, or start the server with --allow-path DIR",
		"%s %q is outside the allowed roots", arg, p)
}

// beneath finds the root that lexically holds p and opens it. rel is p
// relative to it; rootPath is the root's real path.
func beneath(arg, p string, roots []root) (r *os.Root, rootPath, rel string, err error) {
	if p == "" {
		return nil, "", "", errdefs.New(errdefs.ErrInvalidArgument, "give a host path", "%s is empty", arg)
	}
	abs, err := filepath.Abs(p) // cleans: "root/../x" is judged as "x"
	if err != nil {
		return nil, "", "", errdefs.Wrap(errdefs.ErrInvalidArgument, err, "give an absolute host path", "%s %q", arg, p)
	}
	if inPseudoFS(abs) {
		return nil, "", "", outsideError(arg, p, roots)
	}
	for _, rt := range roots {
		for _, form := range []string{rt.real, rt.given} {
			if !within(form, abs) {
				continue
			}
			r, err := os.OpenRoot(rt.real)
			if err != nil {
				break
			}
			rel, _ := filepath.Rel(form, abs)
			return r, rt.real, rel, nil
		}
	}
	return nil, "", "", outsideError(arg, p, roots)
}

// openError explains a failed open beneath a root.
func openError(arg, p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errdefs.Wrap(errdefs.ErrNotFound, err, "check the path", "%s %q", arg, p)
	}
	return errdefs.Wrap(errdefs.ErrFailedPrecondition, err,
		"name a path whose every component stays beneath an allowed root (no symlink out), or start the server with --allow-path DIR",
		"%s %q cannot be opened beneath its root", arg, p)
}

// fdPath is the /proc path of an open descriptor.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// checkReal returns f's real path and checks it lies beneath root and
// outside the pseudo file systems (a root of "/" holds /proc).
func checkReal(arg, p, root string, f *os.File) (string, error) {
	real, err := os.Readlink(fdPath(f))
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "%s %q: cannot tell where it resolved", arg, p)
	}
	if !within(root, real) || inPseudoFS(real) {
		return "", errdefs.New(errdefs.ErrFailedPrecondition,
			"name a path beneath an allowed root outside /proc, /sys and /dev, or start the server with --allow-path DIR",
			"%s %q resolves to %q, outside the allowed roots", arg, p, real)
	}
	return real, nil
}

// source resolves a seed or sync source (a directory or an archive) and
// returns the path to hand the SDK.
func (c *confinement) source(req *mcp.CallToolRequest, arg, p string) (string, error) {
	roots, err := c.roots(req)
	if err != nil {
		return "", err
	}
	r, root, rel, err := beneath(arg, p, roots)
	if err != nil {
		return "", err
	}
	defer r.Close()
	f, err := r.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a fifo must not block the open
	if err != nil {
		return "", openError(arg, p, err)
	}
	defer f.Close()
	real, err := checkReal(arg, p, root, f)
	if err != nil {
		return "", err
	}
	held, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !held.IsDir() && !held.Mode().IsRegular() {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "give a directory or a .tar/.tar.gz/.tgz file", "%s %q is neither a directory nor a regular file", arg, p)
	}
	// Re-check: the real path still names the file that was opened.
	now, err := os.Lstat(real)
	if err != nil || !os.SameFile(held, now) {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "retry once the path stops changing", "%s %q changed while it was checked", arg, p)
	}
	return real, nil
}

// secretFile reads a secret file beneath a root (a regular file of at most
// maxSecretFileBytes) and returns a path the SDK can read the same bytes
// from, and a closer to call once the SDK has read it.
func (c *confinement) secretFile(req *mcp.CallToolRequest, arg, p string) (string, func(), error) {
	roots, err := c.roots(req)
	if err != nil {
		return "", nil, err
	}
	r, root, rel, err := beneath(arg, p, roots)
	if err != nil {
		return "", nil, err
	}
	defer r.Close()
	f, err := r.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a fifo must not block the open
	if err != nil {
		return "", nil, openError(arg, p, err)
	}
	defer f.Close()
	if _, err := checkReal(arg, p, root, f); err != nil {
		return "", nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	if !st.Mode().IsRegular() {
		return "", nil, errdefs.New(errdefs.ErrInvalidArgument, "give a regular file", "%s %q is not a regular file", arg, p)
	}
	if st.Size() > maxSecretFileBytes {
		return "", nil, errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("secret files hold at most %d KiB", maxSecretFileBytes>>10), "%s %q has %d bytes", arg, p, st.Size())
	}
	// Read bounded: the file may grow after the stat.
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return "", nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "check the file", "%s %q", arg, p)
	}
	if len(b) > maxSecretFileBytes {
		return "", nil, errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("secret files hold at most %d KiB", maxSecretFileBytes>>10), "%s %q grew beyond the limit", arg, p)
	}
	m, err := sealedMemfd(b)
	if err != nil {
		return "", nil, err
	}
	return fdPath(m), func() { _ = m.Close() }, nil
}

// sealedMemfd returns an anonymous file holding b that nobody can change.
func sealedMemfd(b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("pyro-secret", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	m := os.NewFile(uintptr(fd), "pyro-secret")
	if _, err := m.Write(b); err != nil {
		m.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	if _, err := unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK); err != nil {
		m.Close()
		return nil, fmt.Errorf("memfd seal: %w", err)
	}
	return m, nil
}

// output resolves an output path: its parent beneath a root, its last
// component not an existing symlink. It returns the path to hand the SDK
// (beneath the pinned parent), the real path to report, and a closer to
// call once the SDK is done.
func (c *confinement) output(req *mcp.CallToolRequest, arg, p string) (sdkPath, real string, done func(), err error) {
	roots, err := c.roots(req)
	if err != nil {
		return "", "", nil, err
	}
	abs, err := filepath.Abs(p)
	if err != nil || p == "" {
		return "", "", nil, errdefs.New(errdefs.ErrInvalidArgument, "give a host path", "%s %q", arg, p)
	}
	name := filepath.Base(abs)
	if name == "/" || name == "." || name == ".." {
		return "", "", nil, errdefs.New(errdefs.ErrInvalidArgument, "name a file or directory to create", "%s %q has no final name", arg, p)
	}
	r, root, relParent, err := beneath(arg, filepath.Dir(abs), roots)
	if err != nil {
		return "", "", nil, err
	}
	defer r.Close()
	dir, err := r.Open(relParent)
	if err != nil {
		return "", "", nil, openError(arg, p, err)
	}
	parent, err := checkReal(arg, p, root, dir)
	if err == nil {
		var st os.FileInfo
		if st, err = dir.Stat(); err == nil && !st.IsDir() {
			err = errdefs.New(errdefs.ErrInvalidArgument, "name a path in an existing directory", "%s %q: parent is not a directory", arg, p)
		}
	}
	if err == nil {
		if st, lerr := r.Lstat(filepath.Join(relParent, name)); lerr == nil {
			if st.Mode()&fs.ModeSymlink != 0 {
				err = errdefs.New(errdefs.ErrInvalidArgument, "name a path that does not exist yet", "%s %q is a symlink", arg, p)
			} else {
				// Said here, with the path the model gave; the SDK checks
				// again when it writes.
				err = errdefs.New(errdefs.ErrAlreadyExists, "choose another path: export never overwrites", "%s %q exists", arg, p)
			}
		}
	}
	if err != nil {
		dir.Close()
		return "", "", nil, err
	}
	return filepath.Join(fdPath(dir), name), filepath.Join(parent, name), func() { _ = dir.Close() }, nil
}
