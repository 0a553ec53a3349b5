package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// A layered /workspace (pyro.workspace=2) is an overlay of two disks: the
// baseline the host built (read-only, LayerLowerDir) and a writable upper
// disk (LayerUpperMount) whose "upper" directory holds every change and
// its whiteouts. What changed since the baseline is therefore exactly what
// the upper directory holds, and a diff reads only that.
const (
	LayerLowerDir   = "/run/pyro/ws/lower"
	LayerUpperMount = "/run/pyro/ws/upper"
)

// upperDir and workDir are the overlay's directories on the upper disk.
func upperDir(mount string) string { return mount + "/upper" }
func workDir(mount string) string  { return mount + "/work" }

// maxLayerChanges bounds the entries a change listing reports (the host's
// diff refuses more anyway).
const maxLayerChanges = 1 << 20

// maxFreeze bounds how long the upper disk stays frozen when the host that
// froze it never thaws it (it died): writes to /workspace block meanwhile.
const maxFreeze = 60 * time.Second

// overlayOpts are the overlay options of a layered /workspace. The
// features that keep state outside the upper directory's plain entries
// (renamed directories as redirects, metadata-only copies, the index)
// stay off, so the upper directory alone says what changed.
func overlayOpts(lower, upperMount string) string {
	return "lowerdir=" + lower + ",upperdir=" + upperDir(upperMount) + ",workdir=" + workDir(upperMount) +
		",redirect_dir=off,index=off,metacopy=off"
}

// upperChanges lists what the overlay's upper directory holds, as the
// entries to compare between the baseline and /workspace: a whiteout, a
// file or an opaque directory stands for its whole subtree (the baseline
// may hold a directory there), a plain directory for itself and what the
// walk finds inside.
func upperChanges(upper string) ([]tarutil.Selected, error) {
	var out []tarutil.Selected
	err := walkUpper(upper, func(p, name string, e fs.DirEntry) (bool, error) {
		if e.IsDir() && !isOpaque(p) {
			out = append(out, tarutil.Selected{Name: name})
			return true, nil
		}
		out = append(out, tarutil.Selected{Name: name, Subtree: true})
		return false, nil
	})
	return out, err
}

// walkUpper visits the upper directory's entries depth-first in name
// order, each with its path on disk and its name relative to upper, and
// descends into an entry when visit says so. It stops with an error after
// maxLayerChanges entries, so a guest's listing stays bounded.
func walkUpper(upper string, visit func(p, name string, e fs.DirEntry) (descend bool, err error)) error {
	seen := 0
	var walk func(dir, rel string) error
	walk = func(dir, rel string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if seen >= maxLayerChanges {
				return fmt.Errorf("more than %d changed entries", maxLayerChanges)
			}
			seen++
			name := e.Name()
			if rel != "" {
				name = rel + "/" + name
			}
			p := filepath.Join(dir, e.Name())
			descend, err := visit(p, name, e)
			if err != nil {
				return err
			}
			if descend {
				if err := walk(p, name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(upper, "")
}

// isOpaque reports whether an upper directory hides the lower one.
func isOpaque(p string) bool {
	buf := make([]byte, 4)
	n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// layers is the agent's handle on the layered /workspace.
type layers struct {
	lower, upperMount string
	upperDisk         string // the upper disk's device (WorkspaceDisk; tests: none)
	mu                sync.Mutex
	frozen            *os.File     // the upper mount while frozen
	thawTimer         *time.Timer  // thaws a freeze the host forgot
	release           releaseState // workspace_release.go
}

func (l *layers) present() bool {
	fi, err := os.Stat(upperDir(l.upperMount))
	return err == nil && fi.IsDir()
}

func (s *Agent) notLayered(w http.ResponseWriter) {
	s.fail(w, errorf(errdefs.ErrFailedPrecondition, "/workspace is not layered in this guest"))
}

// handleLayerChanges streams the entries the upper layer changed, read
// from the baseline (side=lower) or from /workspace (side=merged).
func (s *Agent) handleLayerChanges(w http.ResponseWriter, r *http.Request) {
	if !s.layers.present() {
		s.notLayered(w)
		return
	}
	root := s.workspaceDir
	switch r.URL.Query().Get("side") {
	case agentapi.SideLower:
		root = s.layers.lower
	case agentapi.SideMerged:
	default:
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "side must be %q or %q", agentapi.SideLower, agentapi.SideMerged))
		return
	}
	sel, err := upperChanges(upperDir(s.layers.upperMount))
	if err != nil {
		s.fail(w, categorize(errdefs.ErrFailedPrecondition, err, "list upper layer"))
		return
	}
	w.Header().Set(agentapi.HeaderChanges, strconv.Itoa(len(sel)))
	cw := &countingWriter{w: w}
	_, _, err = tarutil.TarSelected(cw, root, sel)
	if err == nil && cw.b != nil {
		err = cw.b.Flush()
	}
	if err != nil {
		if cw.b == nil {
			s.fail(w, categorize(nil, err, "archive changes"))
			return
		}
		panic(http.ErrAbortHandler)
	}
	if cw.b == nil { // nothing written: still a (empty) tar reply
		_, _ = cw.Write(nil)
	}
}

// handleLayerFreeze freezes the upper disk's file system (FIFREEZE flushes
// it and blocks writers) so the host can copy a consistent image of it.
// The freeze ends on a thaw call, or after ms (at most maxFreeze).
func (s *Agent) handleLayerFreeze(w http.ResponseWriter, r *http.Request) {
	l := s.layers
	if !l.present() {
		s.notLayered(w)
		return
	}
	d := maxFreeze
	if ms, err := strconv.Atoi(r.URL.Query().Get("ms")); err == nil && ms > 0 && time.Duration(ms)*time.Millisecond < d {
		d = time.Duration(ms) * time.Millisecond
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.release.released {
		// The upper disk is not mounted: its mount point is a directory of
		// the root file system, which FIFREEZE would freeze instead.
		s.fail(w, errorf(errdefs.ErrFailedPrecondition, "/workspace is released to the host"))
		return
	}
	if l.frozen == nil {
		f, err := os.Open(l.upperMount)
		if err != nil {
			s.fail(w, categorize(nil, err, "open upper layer"))
			return
		}
		// syncfs first: FIFREEZE alone flushes too, but a long write-back
		// then happens with writers already blocked.
		_ = unix.Syncfs(int(f.Fd()))
		if err := ioctlNoArg(f, fiFreeze); err != nil {
			f.Close()
			s.fail(w, categorize(errdefs.ErrFailedPrecondition, err, "freeze upper layer"))
			return
		}
		l.frozen = f
	}
	if l.thawTimer != nil {
		l.thawTimer.Stop()
	}
	l.thawTimer = time.AfterFunc(d, func() { _ = l.thaw() })
	if r.URL.Query().Get("manifest") == "1" {
		// The listing of the frozen layer, in the same round trip.
		m, err := manifest(upperDir(l.upperMount))
		if err != nil {
			s.fail(w, categorize(errdefs.ErrFailedPrecondition, err, "list upper layer"))
			return
		}
		if m == nil {
			m = []agentapi.LayerEntry{}
		}
		writeJSON(w, http.StatusOK, agentapi.LayerManifest{Entries: m})
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Agent) handleLayerThaw(w http.ResponseWriter, _ *http.Request) {
	if err := s.layers.thaw(); err != nil {
		s.fail(w, categorize(nil, err, "thaw upper layer"))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (l *layers) thaw() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.thawTimer != nil {
		l.thawTimer.Stop()
		l.thawTimer = nil
	}
	if l.frozen == nil {
		return nil
	}
	err := ioctlNoArg(l.frozen, fiThaw)
	if errors.Is(err, unix.EINVAL) { // not frozen (thawed by someone else)
		err = nil
	}
	l.frozen.Close()
	l.frozen = nil
	return err
}

// FIFREEZE and FITHAW (_IOWR('X', 119/120, int)); x/sys/unix lacks them.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

func ioctlNoArg(f *os.File, req uintptr) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, 0)
	if e != 0 {
		return e
	}
	return nil
}

// mountLayers mounts a layered /workspace: the baseline disk read-only,
// the upper disk read-write, and the overlay of both on dir.
func mountLayers(lowerDisk, upperDisk, dir string) error {
	for _, d := range []string{LayerLowerDir, LayerUpperMount} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The baseline has no journal (mke2fs -O ^has_journal); noload keeps a
	// read-only mount from ever replaying one.
	if err := unix.Mount(lowerDisk, LayerLowerDir, "ext4", unix.MS_RDONLY|unix.MS_NOATIME|unix.MS_NODEV, "noload"); err != nil {
		return fmt.Errorf("mount workspace baseline %s: %w", lowerDisk, err)
	}
	if err := unix.Mount(upperDisk, LayerUpperMount, "ext4", unix.MS_NOATIME|unix.MS_NODEV, writableExt4Opts); err != nil {
		return fmt.Errorf("mount workspace upper disk %s: %w", upperDisk, err)
	}
	for _, d := range []string{upperDir(LayerUpperMount), workDir(LayerUpperMount)} {
		if err := os.MkdirAll(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return stackWorkspace(dir, LayerLowerDir, LayerUpperMount)
}

// stackWorkspace mounts the placeholder at dir, then the overlay on it.
func stackWorkspace(dir, lower, upperMount string) error {
	if err := mountPlaceholder(dir); err != nil {
		return err
	}
	return mountOverlay(dir, lower, upperMount)
}

// mountOverlay mounts the layered /workspace at dir: the baseline mounted
// at lower under the upper directory of the disk mounted at upperMount.
func mountOverlay(dir, lower, upperMount string) error {
	if err := unix.Mount("overlay", dir, "overlay", unix.MS_NOATIME|unix.MS_NODEV, overlayOpts(lower, upperMount)); err != nil {
		return fmt.Errorf("mount layered %s: %w", dir, err)
	}
	return nil
}

// mountPlaceholder mounts an empty read-only tmpfs at dir, below the
// overlay that goes on top of it: whenever the overlay is not mounted (a
// release to the host, the instants of its unmount and remount), a write
// to /workspace fails there instead of landing in the root file system
// under the mount point, hidden once the overlay is back.
func mountPlaceholder(dir string) error {
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "size=4k,mode=0755"); err != nil {
		return fmt.Errorf("mount the placeholder under %s: %w", dir, err)
	}
	return nil
}

// manifest lists the upper layer's entries with what identifies their
// state (agentapi.LayerEntry), so two listings taken apart say which paths
// a command touched, whatever it wrote.
func manifest(upper string) ([]agentapi.LayerEntry, error) {
	return manifestWithin(upper, 0)
}

// errManifestTooLarge: a listing would not fit the size it must fit in.
var errManifestTooLarge = errors.New("upper layer listing over its size bound")

// manifestEntryBytes bounds what an entry's fields other than its path
// take once encoded.
const manifestEntryBytes = 160

// manifestWithin is manifest that gives up with errManifestTooLarge as
// soon as the encoded listing would pass maxBytes (0: no bound but the
// walk's), instead of walking the rest of a large upper layer first.
func manifestWithin(upper string, maxBytes int) ([]agentapi.LayerEntry, error) {
	var out []agentapi.LayerEntry
	size := 0
	err := walkUpper(upper, func(p, name string, _ fs.DirEntry) (bool, error) {
		if size += len(name) + manifestEntryBytes; maxBytes > 0 && size > maxBytes {
			return false, errManifestTooLarge
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return false, err
		}
		le, ok := layerEntry(p, name, &st)
		if !ok {
			return false, nil
		}
		out = append(out, le)
		return le.Kind == "dir", nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// layerEntry is the listing's entry for the upper layer's entry at p on
// disk (name relative to the upper directory), of stat st: ok is false
// for a kind the listing leaves out.
func layerEntry(p, name string, st *unix.Stat_t) (agentapi.LayerEntry, bool) {
	le := agentapi.LayerEntry{Path: name, Size: st.Size, MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(), Ino: st.Ino, Mode: st.Mode}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		le.Kind = "dir"
		le.Opaque = isOpaque(p)
	case unix.S_IFLNK:
		le.Kind = "symlink"
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			le.Kind = "whiteout"
		}
	case unix.S_IFREG:
		le.Kind = "file"
	}
	return le, le.Kind != ""
}

func (s *Agent) handleLayerManifest(w http.ResponseWriter, _ *http.Request) {
	if !s.layers.present() {
		s.notLayered(w)
		return
	}
	m, err := manifest(upperDir(s.layers.upperMount))
	if err != nil {
		s.fail(w, categorize(errdefs.ErrFailedPrecondition, err, "list upper layer"))
		return
	}
	if m == nil {
		m = []agentapi.LayerEntry{}
	}
	writeJSON(w, http.StatusOK, agentapi.LayerManifest{Entries: m})
}
