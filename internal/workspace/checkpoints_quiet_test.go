package workspace

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// TestEmptyTop: a fresh overlay is empty and names its parent; after any
// write QEMU makes to it (data, zeroes, a discard), it is not. The writes
// go through qemu-io, QEMU's own block layer, when it is installed.
func TestEmptyTop(t *testing.T) {
	dir := t.TempDir()
	l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
	if err := os.WriteFile(l.Disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(l.Disk, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, empty := l.EmptyTop("workspace.ext4"); empty {
		t.Fatal("a raw root is never an empty overlay")
	}
	a, err := l.NewOverlay("workspace.ext4")
	if err != nil {
		t.Fatal(err)
	}
	if p, empty := l.EmptyTop(a); !empty || p != "workspace.ext4" {
		t.Fatalf("fresh overlay: parent %q empty %v", p, empty)
	}
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	for _, op := range []string{"write -P 7 4096 4096", "write -z 1048576 65536", "discard 0 65536"} {
		top, err := l.NewOverlay(a)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", op, l.Path(top)).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-io %s: %v %s", op, err, out)
		}
		if _, empty := l.EmptyTop(top); empty {
			t.Errorf("after %q the overlay still reads as empty", op)
		}
	}
	// A read allocates nothing.
	top, _ := l.NewOverlay(a)
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read 0 65536", l.Path(top)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io read: %v %s", err, out)
	}
	if _, empty := l.EmptyTop(top); !empty {
		t.Error("a read made the overlay non-empty")
	}
}

// TestPending: a quiet report is kept once, a report that says "same
// listing" keeps the listing held, anything else clears it, and a
// checkpoint takes the listing as its own.
func TestPending(t *testing.T) {
	c := Checkpoints{Dir: filepath.Join(t.TempDir(), CheckpointsDir)}
	if _, _, ok := c.TakePending(); ok || c.PendingManifest() != 0 {
		t.Fatal("pending before any report")
	}
	m := agentapi.LayerManifest{Entries: []agentapi.LayerEntry{{Path: "a.txt", Kind: "file", Size: 3}}}
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 10, Manifest: &m}); err != nil {
		t.Fatal(err)
	}
	if c.PendingManifest() != 10 {
		t.Fatalf("held listing %d", c.PendingManifest())
	}
	e, list, ok := c.TakePending()
	if !ok || e != 10 {
		t.Fatalf("take: %d %v", e, ok)
	}
	if e2, _, ok := c.TakePending(); !ok || e2 != 10 {
		t.Fatal("a report went with its first use (the guest's epoch check refuses a second)")
	}
	if c.PendingManifest() != 10 {
		t.Fatal("the listing went with the report")
	}
	cp, durable, err := c.TakeLayerListed(LayerRef{Layer: "workspace.ext4"}, 0, list, "exec: true")
	if err != nil {
		t.Fatal(err)
	}
	if err := durable(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Manifest(cp.Number)
	if err != nil || len(got.Entries) != 1 || got.Entries[0].Path != "a.txt" {
		t.Fatalf("checkpoint listing %+v %v", got, err)
	}
	// Unchanged since 10: the held listing stands for epoch 12.
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 12, SameAs: 10}); err != nil {
		t.Fatal(err)
	}
	if e, list, ok := c.TakePending(); !ok || e != 12 || filepath.Base(list) != "pending-10.manifest.json" {
		t.Fatalf("take after same: %d %s %v", e, list, ok)
	}
	// A listing the host does not hold, or no report: nothing pending.
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 14, SameAs: 9}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.TakePending(); ok || c.PendingManifest() != 0 {
		t.Fatal("a report naming an unknown listing was kept")
	}
	_ = c.SavePending(&agentapi.QuietReport{Epoch: 16, Manifest: &m})
	_ = c.SavePending(nil)
	if _, _, ok := c.TakePending(); ok {
		t.Fatal("no report kept the old one")
	}
	// Numbers go on after the record of the last checkpoint.
	cp2, _, err := c.TakeLayerListed(LayerRef{Layer: "workspace.ext4"}, 0, list, "exec: true")
	if err == nil && cp2.Number != cp.Number+1 {
		t.Fatalf("checkpoint numbers %d then %d", cp.Number, cp2.Number)
	}
}

// TestDropLeavesLater: a quiet checkpoint the guest refused goes alone;
// the checkpoint a concurrent exec took after it stays (a guest that
// refuses on purpose must not erase another exec's undo point).
func TestDropLeavesLater(t *testing.T) {
	c := Checkpoints{Dir: filepath.Join(t.TempDir(), CheckpointsDir)}
	m := agentapi.LayerManifest{}
	a, err := c.TakeLayer(LayerRef{Layer: "workspace.ext4"}, 0, m, "exec: a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.TakeLayer(LayerRef{Layer: "workspace.ext4"}, 0, m, "exec: b")
	if err != nil {
		t.Fatal(err)
	}
	c.Drop(a.Number)
	if _, err := c.Get(a.Number); err == nil {
		t.Fatalf("checkpoint %d still there", a.Number)
	}
	if _, err := c.Get(b.Number); err != nil {
		t.Fatalf("the later checkpoint %d went too: %v", b.Number, err)
	}
	if next, err := c.TakeLayer(LayerRef{Layer: "workspace.ext4"}, 0, m, "exec: c"); err != nil || next.Number != b.Number+1 {
		t.Fatalf("next number %d %v", next.Number, err)
	}
}

// TestLayerCheckpointNumbers: a chained checkpoint reserves no number
// before its record (no write of "last" on a checkpoint's path), yet a
// number that had a record is never taken again: not after the newest
// was dropped (a refused quiet exec), nor after an undo dropped several.
// A number whose record was never written (a crash half way) is taken by
// the next checkpoint, which replaces what the crash left under it.
func TestLayerCheckpointNumbers(t *testing.T) {
	c := Checkpoints{Dir: filepath.Join(t.TempDir(), CheckpointsDir)}
	m := agentapi.LayerManifest{}
	take := func(layer string) Checkpoint {
		t.Helper()
		cp, err := c.TakeLayer(LayerRef{Layer: layer}, 0, m, "exec: "+layer)
		if err != nil {
			t.Fatal(err)
		}
		return cp
	}
	for i := 1; i <= 3; i++ {
		if cp := take("a"); cp.Number != i {
			t.Fatalf("checkpoint %d numbered %d", i, cp.Number)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "last")); err == nil {
		t.Fatal("a chained checkpoint wrote \"last\" on its path")
	}
	c.Drop(3)
	if cp := take("b"); cp.Number != 4 {
		t.Fatalf("after the newest was dropped: number %d, want 4", cp.Number)
	}
	if err := c.DropFrom(2); err != nil {
		t.Fatal(err)
	}
	if cp := take("c"); cp.Number != 5 {
		t.Fatalf("after an undo: number %d, want 5", cp.Number)
	}
	// A crash after the sidecar, before the record: no checkpoint 6, and
	// the next one takes 6 with its own layer.
	if err := os.WriteFile(c.path(6, ".layer"), []byte(`{"layer":"stale"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(6); err == nil {
		t.Fatal("a sidecar without its record reads as a checkpoint")
	}
	cp := take("d")
	if cp.Number != 6 {
		t.Fatalf("after a crash half way: number %d, want 6", cp.Number)
	}
	ref, ok := readRef(c.path(6, ".layer"), cp.SHA256)
	if !ok || ref.Layer != "d" {
		t.Fatalf("checkpoint 6 names %+v (ok %v), want layer d", ref, ok)
	}
}
