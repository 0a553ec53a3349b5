package pyro

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A running host push killed after it named its new layer the top but
// before QEMU switched to it leaves a pivot record; the guest then
// remounts the old layer by itself and writes to it. Stopped, the
// workspace boots on the old layer (LiveChain settles the record), and a
// host push into it must build on that layer too: built on the new one,
// it named a top without what the guest wrote since (and the next boot,
// finding the top moved past the record, kept it).
func TestHostPushStoppedSettlesPivot(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	stalePivot(t, dir, rec)
	l := layersOf(dir, rec)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root+"/pushed", nil, nil); err != nil {
		t.Fatal(err)
	}
	names := lsUpper(t, dir, rec, "/upper")
	if !slices.Contains(names, "written-after") || !slices.Contains(names, "pushed") {
		t.Fatalf("after the push /upper holds %v: want what the guest wrote after the release and the push", names)
	}
	if _, ok := l.PivotUnderWay(); ok {
		t.Fatal("the pivot record is still there")
	}
}

// The disk tools read a stopped workspace's images: with a pivot left
// under way whose new layer QEMU never switched to (the guest wrote the
// old one since), they read the layer the next boot mounts, not the named
// top.
func TestDiskToolsSettlePivot(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()
	dir, rec := registeredStoppedWorkspace(t, c, 64<<20)
	stalePivot(t, dir, rec)
	list, err := c.ListWorkspaceDisk(ctx, rec.ID, workspace.Root, false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list.Entries {
		names = append(names, filepath.Base(e.Path))
	}
	if !slices.Contains(names, "written-after") {
		t.Fatalf("the disk tools list %v: want what the guest wrote after the release", names)
	}
}

// stalePivot leaves in the stopped workspace what a running host push
// killed between naming its new layer the top and QEMU's switch leaves
// (the new layer a copy of the upper disk, the record, the top), then
// writes /upper/written-after into the old layer, as the guest does once
// it remounted it by itself.
func stalePivot(t *testing.T, dir vmdir.Dir, rec instance.Record) {
	t.Helper()
	l := layersOf(dir, rec)
	root := filepath.Base(rec.WorkspaceDisk)
	if err := os.MkdirAll(l.Path(workspace.LayersDir), 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(rec.WorkspaceDisk)
	if err != nil {
		t.Fatal(err)
	}
	next := workspace.LayersDir + "/1.raw"
	if err := os.WriteFile(l.Path(next), b, 0o600); err != nil {
		t.Fatal(err)
	}
	size, mtime, blocks, err := l.Identity(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetPivot(workspace.Pivot{Layer: next, Parent: root, Size: size, Mtime: mtime, Blocks: blocks}); err != nil {
		t.Fatal(err)
	}
	if err := l.SetTop(next); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the write after gets another mtime
	if out, err := exec.Command("debugfs", "-w", "-R", "mkdir /upper/written-after", rec.WorkspaceDisk).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
}
