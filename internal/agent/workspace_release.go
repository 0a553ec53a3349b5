package agent

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Releasing a layered /workspace to the host (see agentapi/release.go):
// the host writes a new upper layer while the guest holds none of it, and
// makes QEMU use it. Release syncs and unmounts the overlay, then the
// upper disk; the baseline stays mounted (nobody changes it). While it is
// released, /workspace is the empty read-only tmpfs mounted below the
// overlay at boot (mountPlaceholder), so that a command started meanwhile
// fails to write there instead of writing into the root file system under
// the mount point. Remount drops every block of the
// upper disk the guest kernel cached (the disk below it may be another
// file now) and mounts it and the overlay exactly as at boot.

// maxRelease bounds how long /workspace stays released when the host never
// remounts it (it died): then the guest remounts it by itself. The host
// only switches QEMU's disk well before this passes.
const maxRelease = 2 * time.Minute

// releaseState is the agent's side of a release (guarded by layers.mu).
type releaseState struct {
	released bool
	timer    *time.Timer
}

func (s *Agent) releaseRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+agentapi.PathLayerRelease, s.handleLayerRelease)
	mux.HandleFunc("POST "+agentapi.PathLayerRemount, s.handleLayerRemount)
}

// handleLayerRelease unmounts /workspace and its upper disk (?ms=N: the
// longest the release may last). Something holding /workspace (a service,
// a shell, a process with its cwd or a file there) fails it with
// failed_precondition and leaves /workspace mounted.
func (s *Agent) handleLayerRelease(w http.ResponseWriter, r *http.Request) {
	l := s.layers
	if !l.present() {
		s.notLayered(w)
		return
	}
	d := maxRelease
	if ms, err := strconv.Atoi(r.URL.Query().Get("ms")); err == nil && ms > 0 && time.Duration(ms)*time.Millisecond < d {
		d = time.Duration(ms) * time.Millisecond
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen != nil || l.release.released {
		s.fail(w, errorf(errdefs.ErrFailedPrecondition, "/workspace is frozen or released already"))
		return
	}
	// ?manifest=1: the upper layer is listed once the overlay is
	// unmounted (nothing in the guest changes it from then on) and before
	// its disk is: the listing of exactly what the host takes over.
	var listed *agentapi.LayerManifest
	var list func() error
	same := claimedQuiet(r) // the host holds the listing of this epoch
	if r.URL.Query().Get("manifest") == "1" && same == 0 {
		list = func() error {
			m, err := manifest(upperDir(l.upperMount))
			if err != nil {
				return fmt.Errorf("list the upper layer: %w", err)
			}
			if m == nil {
				m = []agentapi.LayerEntry{}
			}
			listed = &agentapi.LayerManifest{Entries: m}
			return nil
		}
	}
	if err := releaseWorkspace(s.workspaceDir, l.lower, l.upperMount, list); err != nil {
		s.fail(w, categorize(errdefs.ErrFailedPrecondition, err, "release /workspace"))
		return
	}
	l.release.released = true
	// The host may have switched the disk before it died: the guest's
	// cache of it goes in any case.
	l.release.timer = time.AfterFunc(d, s.remountByItself)
	if listed != nil {
		writeJSON(w, http.StatusOK, listed)
		return
	}
	if same != 0 && r.URL.Query().Get("manifest") == "1" {
		writeJSON(w, http.StatusOK, struct {
			SameAs uint64 `json:"same_as"`
		}{same})
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleLayerRemount mounts a released /workspace again (?drop=1: first
// drop the upper disk's cached blocks). Remounting what is mounted is a
// no-op.
func (s *Agent) handleLayerRemount(w http.ResponseWriter, r *http.Request) {
	if err := s.remountWorkspace(r.URL.Query().Get("drop") == "1"); err != nil {
		s.fail(w, categorize(nil, err, "remount /workspace"))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// remountRetry is how soon the guest tries again when remounting by
// itself failed (e.g. the upper disk busy for a moment).
var remountRetry = 5 * time.Second

// remountByItself is the guest's own remount once a release outlived its
// bound (the host gone): it tries until /workspace is back.
func (s *Agent) remountByItself() {
	err := s.remountWorkspace(true)
	if err == nil {
		return
	}
	s.log.Warn("remount /workspace after the release", "err", err)
	l := s.layers
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.release.released {
		l.release.timer = time.AfterFunc(remountRetry, s.remountByItself)
	}
}

func (s *Agent) remountWorkspace(drop bool) error {
	l := s.layers
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.release.released {
		return nil
	}
	if drop {
		// The guest's view of the upper disk was cached from the layer
		// QEMU served before: none of it may be read again.
		if err := dropCachedBlocks(l.upperDisk); err != nil {
			return err
		}
	}
	if err := unix.Mount(l.upperDisk, l.upperMount, "ext4", unix.MS_NOATIME|unix.MS_NODEV, writableExt4Opts); err != nil {
		return fmt.Errorf("mount workspace upper disk: %w", err)
	}
	for _, d := range []string{upperDir(l.upperMount), workDir(l.upperMount)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			_ = unix.Unmount(l.upperMount, 0) // a later remount starts over
			return err
		}
	}
	if err := mountOverlay(s.workspaceDir, l.lower, l.upperMount); err != nil {
		_ = unix.Unmount(l.upperMount, 0) // a later remount starts over
		return err
	}
	l.release.released = false
	if l.release.timer != nil {
		l.release.timer.Stop()
		l.release.timer = nil
	}
	return nil
}

// releaseWorkspace syncs and unmounts the overlay at dir and the upper
// disk at upperMount (both or neither); the placeholder below the overlay
// shows meanwhile. list, when set, runs between the two unmounts; its
// failure mounts the overlay again and fails the release.
func releaseWorkspace(dir, lower, upperMount string, list func() error) error {
	if f, err := os.Open(dir); err == nil {
		_ = unix.Syncfs(int(f.Fd()))
		f.Close()
	}
	if err := unix.Unmount(dir, 0); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("something in the guest holds %s (a service, shell or job, or a process with its cwd or a file there): %w", dir, err)
		}
		return err
	}
	remount := func(err error) error {
		if merr := mountOverlay(dir, lower, upperMount); merr != nil {
			return errors.Join(err, fmt.Errorf("mount %s again: %w", dir, merr))
		}
		return err
	}
	if list != nil {
		if err := list(); err != nil {
			return remount(err)
		}
	}
	// The overlay's unmount released its hold on the upper disk; a process
	// with a file open on the upper disk itself (none of pyro's) keeps it.
	if err := unix.Unmount(upperMount, 0); err != nil {
		return remount(fmt.Errorf("unmount the upper disk: %w", err))
	}
	return nil
}
