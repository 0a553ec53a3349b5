package pyro

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostwrite"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A host push killed while it staged its source (kill -9 of the CLI: no
// deferred removal) left its staging in the workspace directory for good,
// copies of the source included; the next push of the workspace sweeps
// it, read-only directories and all, and nothing else.
func TestSweepPushStaging(t *testing.T) {
	d := t.TempDir()
	stale := filepath.Join(d, pushStagingPrefix+"123", "tree", "ro")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "copy"), make([]byte, 1<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(stale, 0o555); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(d, "layers")
	if err := os.Mkdir(keep, 0o700); err != nil {
		t.Fatal(err)
	}
	sweepPushStaging(vmdir.Dir(d))
	if _, err := os.Lstat(filepath.Join(d, pushStagingPrefix+"123")); !os.IsNotExist(err) {
		t.Fatalf("stale staging still there: %v", err)
	}
	if _, err := os.Lstat(keep); err != nil {
		t.Fatalf("swept more than staging: %v", err)
	}
}

// A fork made but not yet started restores a memory state that expects its
// disk as forked: a host push must leave that disk alone (the push goes
// through the guest, which waits for the fork to run).
func TestHostPushLeavesUnstartedFork(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	if err := os.WriteFile(dir.Path(supervisor.ForkFile), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := instance.Record{ID: "fork1", WorkspaceBase: "base.img", WorkspaceDisk: "upper.img"}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root, nil, nil); !errors.Is(err, errNotHere) {
		t.Fatalf("push into an unstarted fork: err = %v, want the guest's path", err)
	}
	if _, err := os.Stat(dir.Path(workspace.LayersDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the host push touched the fork's layers: %v", err)
	}
}

// stoppedWorkspace makes the directory of a stopped layered workspace:
// an upper disk of size bytes holding /upper and /work (as the guest
// leaves it), and an empty baseline. A zeroed journal (lazy false) has
// its blocks written, as a guest's use leaves them.
func stoppedWorkspace(t testing.TB, size int64, lazy bool) (vmdir.Dir, instance.Record) {
	t.Helper()
	dir := vmdir.Dir(t.TempDir())
	rec := instance.Record{ID: "hp" + strconv.Itoa(int(size>>20))}
	makeLayerImages(t, dir, &rec, size, lazy)
	return dir, rec
}

// registeredStoppedWorkspace is stoppedWorkspace made through c's
// lifecycle, so that c's methods find it by its id.
func registeredStoppedWorkspace(t *testing.T, c *Client, size int64) (vmdir.Dir, instance.Record) {
	t.Helper()
	rec := instance.Record{ID: vmdir.NewID(), Kind: instance.KindWorkspace, Environment: DefaultEnvironment, VCPUCount: 1, MemMiB: 256, CreatedAt: time.Now().UTC()}
	dir, rec, err := c.lc.Create(context.Background(), rec, func(d vmdir.Dir, r *instance.Record) error {
		makeLayerImages(t, d, r, size, true)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir, rec
}

// makeLayerImages makes rec's upper disk and baseline in dir (see
// stoppedWorkspace).
func makeLayerImages(t testing.TB, dir vmdir.Dir, rec *instance.Record, size int64, lazy bool) {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("no mke2fs (e2fsprogs)")
	}
	if !hostwrite.Confinable() {
		t.Skip("no Landlock on this kernel: host pushes go through the guest")
	}
	mk := func(name string, size int64, lazy bool, script string) string {
		p := dir.Path(name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		opt := "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"
		if !lazy {
			opt = "lazy_itable_init=1,lazy_journal_init=0,root_owner=0:0"
		}
		if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-E", opt, p).CombinedOutput(); err != nil {
			t.Fatalf("mke2fs: %v: %s", err, out)
		}
		if script != "" {
			cmd := exec.Command("debugfs", "-w", "-f", "-", p)
			cmd.Stdin = strings.NewReader(script)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("debugfs: %v: %s", err, out)
			}
		}
		return p
	}
	rec.WorkspaceDisk = mk("upper.img", size, lazy, "mkdir upper\nmkdir work\n")
	rec.WorkspaceBase = mk("base.img", 64<<20, true, "")
}

// A host push that fails for its own reason (here the workspace disk is
// too small for the tree) says so; it used to fall back to the guest's
// path, which for a stopped workspace only says "start it first".
func TestHostPushReturnsItsErrors(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()
	dir, rec := registeredStoppedWorkspace(t, c, 16<<20)
	src := t.TempDir()
	big := make([]byte, 16<<20-1)
	_, _ = rand.Read(big) // zeros would be written as holes
	if err := os.WriteFile(filepath.Join(src, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	_, ok, err := c.pushHost(ctx, dir, rec, src, "directory", workspace.Root+"/q")
	if !ok || !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "workspace disk") {
		t.Fatalf("push into a full workspace disk: served %v, err %v", ok, err)
	}
	if top, _ := layersOf(dir, rec).Top(); top != filepath.Base(rec.WorkspaceDisk) {
		t.Fatalf("a failed push changed the top layer to %s", top)
	}
	// What the host path does not serve still goes through the guest: a
	// source that is a symlink to a directory (staging never follows one),
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(src, link); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.pushHost(ctx, dir, rec, link, "directory", workspace.Root+"/s"); ok || err != nil {
		t.Fatalf("push of a symlinked source: served %v, err %v", ok, err)
	}
	// a name debugfs cannot take.
	if err := os.Symlink("x", filepath.Join(src, `bad\name`)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.pushHost(ctx, dir, rec, src, "directory", workspace.Root+"/r"); ok || err != nil {
		t.Fatalf("push of a name debugfs cannot take: served %v, err %v", ok, err)
	}
}

// lsUpper lists the names in the directory p of layer name's image.
func lsUpper(t testing.TB, dir vmdir.Dir, rec instance.Record, p string) []string {
	t.Helper()
	l := layersOf(dir, rec)
	top, err := l.Top()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-R", "ls -p "+p, l.Path(top)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Split(line, "/"); len(f) == 8 && f[5] != "." && f[5] != ".." {
			names = append(names, f[5])
		}
	}
	return names
}

// A source with more top-level entries than the per-entry lookups were
// bounded to (256), pushed into a directory new to both layers, is served
// on the host: nothing can exist under a new directory (7312e43).
func TestHostPushWideSourceIntoNewDir(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	src := t.TempDir()
	for i := range 300 {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("e%d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root+"/new/deep", nil, nil); err != nil {
		t.Fatalf("wide push into a new directory: %v", err)
	}
	if got := lsUpper(t, dir, rec, "/upper/new/deep"); len(got) != 300 {
		t.Fatalf("pushed %d entries, want 300", len(got))
	}
}

// TestHostPushTiming times one push of $PYRO_PUSH_TIMING (a directory)
// into an 8 GiB upper layer whose journal blocks are written: a
// measurement, not a test (skipped unless the variable is set).
func TestHostPushTiming(t *testing.T) {
	src := os.Getenv("PYRO_PUSH_TIMING")
	if src == "" {
		t.Skip("set PYRO_PUSH_TIMING to a directory to time a host push")
	}
	dir, rec := stoppedWorkspace(t, 8<<30, false)
	for i := range 3 {
		s := time.Now()
		if _, err := pushIntoLayers(context.Background(), dir, rec, src, fmt.Sprintf("%s/q%d", workspace.Root, i), nil, nil); err != nil {
			t.Fatal(err)
		}
		t.Logf("push %d: %v", i, time.Since(s))
	}
}

// A push copies the upper layer without its clean journal's body (written
// by the guest, read by nobody before it is written again): the new layer
// holds the journal's superblock and not its 4 MiB of old transactions,
// and it checks clean (e2fsck) with the pushed tree in it. A name that
// exists in the upper layer still sends the push through the guest.
func TestHostPushSkipsJournalBody(t *testing.T) {
	if _, err := exec.LookPath("e2fsck"); err != nil {
		t.Skip("no e2fsck")
	}
	dir, rec := stoppedWorkspace(t, 256<<20, true)
	out, err := exec.Command("debugfs", "-R", "stat <8>", rec.WorkspaceDisk).Output()
	if err != nil {
		t.Fatal(err)
	}
	// "(0-1023):PHYS-..." : fill the body with old transactions' bytes.
	var phys, n int64
	if _, err := fmt.Sscanf(string(out[strings.Index(string(out), "EXTENTS:\n(0-")+len("EXTENTS:\n(0-"):]), "%d):%d", &n, &phys); err != nil {
		t.Fatalf("journal extents: %v: %s", err, out)
	}
	f, err := os.OpenFile(rec.WorkspaceDisk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, n*4096)
	_, _ = rand.Read(junk)
	if _, err := f.WriteAt(junk, (phys+1)*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := exec.Command("debugfs", "-w", "-R", "mkdir upper/a", rec.WorkspaceDisk).Run(); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root, nil, nil); !errors.Is(err, errNotHere) {
		t.Fatalf("push over an existing name: %v, want the guest's path", err)
	}
	if err := os.Rename(filepath.Join(src, "a"), filepath.Join(src, "b")); err != nil {
		t.Fatal(err)
	}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root, nil, nil); err != nil {
		t.Fatal(err)
	}
	l := layersOf(dir, rec)
	top, _ := l.Top()
	if out, err := exec.Command("e2fsck", "-fn", l.Path(top)).CombinedOutput(); err != nil {
		t.Fatalf("the pushed layer does not check clean: %v: %s", err, out)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(l.Path(top), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= n*4096 {
		t.Fatalf("the pushed layer holds %d bytes: the journal's %d-byte body was copied", st.Blocks*512, n*4096)
	}
	if got := lsUpper(t, dir, rec, "/upper"); !slices.Contains(got, "b") {
		t.Fatalf("pushed entries %v", got)
	}
}
