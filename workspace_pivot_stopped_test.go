package pyro

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

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
	// The guest, on the old layer still, writes a file there.
	time.Sleep(20 * time.Millisecond)
	if out, err := exec.Command("debugfs", "-w", "-R", "mkdir /upper/written-after", rec.WorkspaceDisk).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root+"/pushed"); err != nil {
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
