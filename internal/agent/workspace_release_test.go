package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// The instant the overlay is unmounted (a release to the host, before
// its own placeholder could be mounted) a command writing to /workspace
// must fail, not write into the root file system under the mount point,
// where the write would be hidden (lost) once the overlay is back. Run as
// root on the host with a bind mount standing in for the upper disk.
func TestWorkspaceNeverBareDuringRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount (overlay, tmpfs)")
	}
	base := t.TempDir()
	lower, upperData, upperMount, dir := filepath.Join(base, "lower"), filepath.Join(base, "upper-data"), filepath.Join(base, "upper"), filepath.Join(base, "ws")
	for _, d := range []string{lower, upperData, upperMount, dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountUpper := func() {
		t.Helper()
		if err := unix.Mount(upperData, upperMount, "", unix.MS_BIND, ""); err != nil {
			t.Skipf("bind mount: %v", err)
		}
		for _, d := range []string{upperDir(upperMount), workDir(upperMount)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	mountUpper()
	if err := stackWorkspace(dir, lower, upperMount); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		_ = unix.Unmount(upperMount, 0)
		t.Skip(err) // no overlayfs or tmpfs here
	}
	t.Cleanup(func() {
		for _, m := range []string{dir, dir, upperMount} {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}

	// What every release does first, seen by a writer in that instant.
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lost.txt"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write with the overlay unmounted: %v, want EROFS", err)
	}
	if err := mountOverlay(dir, lower, upperMount); err != nil {
		t.Fatal(err)
	}

	// The whole release and remount.
	if err := releaseWorkspace(dir, lower, upperMount, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.txt"), []byte("b"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write while released: %v, want EROFS", err)
	}
	mountUpper()
	if err := mountOverlay(dir, lower, upperMount); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a.txt")); err != nil || string(b) != "a" {
		t.Fatalf("a.txt after the remount: %q, %v", b, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("/workspace after the remount holds %d entries, want a.txt only", len(ents))
	}
}

// A freeze asked for while /workspace is released (only a host that died
// mid-push leaves it so) is refused: the upper disk's mount point is then
// a directory of the root file system, which FIFREEZE would freeze.
func TestFreezeRefusedWhileReleased(t *testing.T) {
	upper := t.TempDir()
	if err := os.MkdirAll(upperDir(upper), 0o755); err != nil {
		t.Fatal(err)
	}
	a := New(Options{LayerLowerDir: t.TempDir(), LayerUpperMount: upper})
	a.layers.release.released = true
	c := serveTestAgent(t, a)
	err := c.FreezeLayer(testCtx(t), time.Second)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "released") {
		t.Fatalf("freeze while released: %v", err)
	}
	if a.layers.frozen != nil {
		t.Fatal("frozen")
	}
}

// The guest's own remount (the host gone past the release) that fails
// tries again instead of leaving /workspace released for good.
func TestRemountByItselfRetries(t *testing.T) {
	a := New(Options{LayerLowerDir: t.TempDir(), LayerUpperMount: t.TempDir()})
	a.layers.upperDisk = filepath.Join(t.TempDir(), "no-disk") // never a host disk
	a.layers.release.released = true
	a.remountByItself() // the mount fails
	a.layers.mu.Lock()
	defer a.layers.mu.Unlock()
	if a.layers.release.timer == nil || !a.layers.release.released {
		t.Fatal("a failed remount by itself is not tried again")
	}
	a.layers.release.timer.Stop()
}

// A release asked for with its listing lists the upper layer as the host
// takes it over: what was written before the release, and the guest's
// /workspace refuses writes once the call answered. Root only (real
// overlay and tmpfs, a bind mount standing in for the upper disk).
func TestReleaseListsUpper(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount (overlay, tmpfs)")
	}
	base := t.TempDir()
	lower, upperData, upperMount, dir := filepath.Join(base, "lower"), filepath.Join(base, "upper-data"), filepath.Join(base, "upper"), filepath.Join(base, "ws")
	for _, d := range []string{lower, upperData, upperMount, dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(upperData, upperMount, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	for _, d := range []string{upperDir(upperMount), workDir(upperMount)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := stackWorkspace(dir, lower, upperMount); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		_ = unix.Unmount(upperMount, 0)
		t.Skip(err)
	}
	t.Cleanup(func() {
		for _, m := range []string{dir, dir, upperMount} {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "a.txt"), []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := New(Options{WorkspaceDir: dir, LayerLowerDir: lower, LayerUpperMount: upperMount})
	c := serveTestAgent(t, a)
	m, ok, err := c.ReleaseWorkspaceListed(testCtx(t), time.Minute)
	a.layers.mu.Lock()
	if a.layers.release.timer != nil {
		a.layers.release.timer.Stop()
	}
	a.layers.mu.Unlock()
	if err != nil || !ok {
		t.Fatalf("release with its listing: ok %v, %v", ok, err)
	}
	var got []string
	for _, e := range m.Entries {
		got = append(got, e.Path+":"+e.Kind+":"+strconv.FormatInt(e.Size, 10))
	}
	// (a directory's size depends on the file system under the test)
	if len(got) != 2 || !strings.HasPrefix(got[0], "sub:dir:") || got[1] != "sub/a.txt:file:3" {
		t.Fatalf("listing at the release: %v", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.txt"), []byte("b"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write after the release: %v, want EROFS", err)
	}
}
