package envstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/statedir"
)

// TestE2EPull builds a real environment. It needs root, the Debian mirror and
// about a minute; set PYRO_E2E=1 to run it (PYRO_E2E_ENV picks the
// environment, default debian:12-base).
func TestE2EPull(t *testing.T) {
	if os.Getenv("PYRO_E2E") != "1" {
		t.Skip("real environment build skipped: set PYRO_E2E=1 (needs root, mmdebstrap or debootstrap, and the Debian mirror)")
	}
	if os.Geteuid() != 0 {
		t.Skip("real environment build skipped: needs root")
	}
	name := os.Getenv("PYRO_E2E_ENV")
	if name == "" {
		name = "debian:12-base"
	}
	dirs := statedir.Dirs{Root: t.TempDir()}
	if d := os.Getenv("PYRO_E2E_STATE"); d != "" { // reuse between runs
		dirs.Root = d
	}
	s := New(dirs.Environments(), dirs.Cache(), WithLogger(testLogger(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	var phases []string
	start := time.Now()
	res, err := s.Pull(ctx, name, PullOptions{Progress: func(ev Event) {
		if len(phases) == 0 || phases[len(phases)-1] != ev.Phase {
			phases = append(phases, ev.Phase)
		}
		if ev.Total == 0 || ev.Done == 0 {
			t.Logf("%6.1fs %-8s %s", time.Since(start).Seconds(), ev.Phase, ev.Message)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pull %s: %d ms (already installed: %v), phases %v", name, res.DurationMS, res.AlreadyInstalled, phases)
	m := res.Installed.Manifest
	t.Logf("kernel %+v, modules %v, builtin %v, total %d MiB, digest %s", m.Kernel, m.Modules, m.BuiltinModules, m.TotalBytes>>20, m.Digest)

	inst, err := s.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := os.ReadFile(inst.KernelPath())
	if !bytes.HasPrefix(k, []byte("\x7fELF")) {
		t.Fatal("vmlinux is not ELF")
	}
	img, err := os.Open(inst.RootfsPath())
	if err != nil {
		t.Fatal(err)
	}
	sb := make([]byte, 2048)
	if _, err := img.ReadAt(sb, 0); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if binary.LittleEndian.Uint16(sb[1024+0x38:]) != 0xef53 {
		t.Fatal("rootfs.ext4 has no ext4 superblock magic")
	}
	if compat := binary.LittleEndian.Uint32(sb[1024+0x5c:]); compat&0x4 != 0 {
		t.Error("rootfs.ext4 has a journal")
	}
	if len(inst.ModulePaths()) < 8 {
		t.Fatalf("modules = %v", inst.ModulePaths())
	}
	for _, p := range inst.ModulePaths() {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}

	again, err := s.Pull(ctx, name, PullOptions{})
	if err != nil || !again.AlreadyInstalled {
		t.Fatalf("second pull: %+v, %v", again, err)
	}
	t.Logf("second pull (full verify): %d ms", again.DurationMS)

	// Grow the image: the fast check notices, Pull rebuilds.
	f, err := os.OpenFile(inst.RootfsPath(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()
	if _, err := s.Get(name); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Get of a damaged install: %v", err)
	}
	start = time.Now()
	re, err := s.Pull(ctx, name, PullOptions{})
	if err != nil || !re.Rebuilt {
		t.Fatalf("rebuild: %+v, %v", re, err)
	}
	t.Logf("rebuild (kernel cached): %d ms", re.DurationMS)
	if _, err := s.Get(name); err != nil {
		t.Fatal(err)
	}
	if ents, _ := filepath.Glob(filepath.Join(dirs.Environments(), ".tmp-*")); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

// TestE2EPullCancelled interrupts a real build while the bootstrap tool runs
// and checks that nothing is left: no temp directory, no mounts, no tools.
func TestE2EPullCancelled(t *testing.T) {
	if os.Getenv("PYRO_E2E") != "1" {
		t.Skip("real environment build skipped: set PYRO_E2E=1 (needs root, mmdebstrap or debootstrap, and the Debian mirror)")
	}
	if os.Geteuid() != 0 {
		t.Skip("real environment build skipped: needs root")
	}
	dirs := statedir.Dirs{Root: t.TempDir()}
	s := New(dirs.Environments(), dirs.Cache(), WithLogger(testLogger(t)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var once sync.Once
	start := time.Now()
	_, err := s.Pull(ctx, "debian:12-base", PullOptions{Progress: func(ev Event) {
		if ev.Phase == "rootfs" {
			once.Do(func() { time.AfterFunc(4*time.Second, cancel) })
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	t.Logf("cancelled pull returned after %v", time.Since(start))
	if ents, _ := filepath.Glob(filepath.Join(dirs.Environments(), ".tmp-*")); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	if m, _ := mountsUnder(dirs.Root); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
	if out, _ := exec.Command("pgrep", "-f", dirs.Root).Output(); len(out) != 0 {
		t.Fatalf("processes left: %s", out)
	}
}
