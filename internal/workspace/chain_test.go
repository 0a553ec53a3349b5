package workspace

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sparseRoot is a layer store in a new directory whose root disk is a
// sparse file of size bytes.
func sparseRoot(t *testing.T, size int64) Layers {
	t.Helper()
	dir := t.TempDir()
	l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
	if err := os.WriteFile(l.Disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(l.Disk, size); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestOverlayHeader writes an overlay pyro's way, reads it back, and (when
// qemu-img is installed) has QEMU's own checker accept it and follow its
// backing.
func TestOverlayHeader(t *testing.T) {
	l := sparseRoot(t, 8<<30)
	a, err := l.NewOverlay("workspace.ext4")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.NewOverlay(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetTop(b); err != nil {
		t.Fatal(err)
	}
	chain, err := l.Chain(b)
	if err != nil || strings.Join(chain, ",") != "workspace.ext4,layers/1.qcow2,layers/2.qcow2" {
		t.Fatalf("chain %v %v", chain, err)
	}
	info, err := ReadOverlay(l.Path(b))
	if err != nil || info.Size != 8<<30 || info.Backing != "1.qcow2" || info.BackingFmt != "qcow2" {
		t.Fatalf("%+v %v", info, err)
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		out, err := exec.Command("qemu-img", "check", l.Path(b)).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img check: %v %s", err, out)
		}
		out, err = exec.Command("qemu-img", "info", "--backing-chain", l.Path(b)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "workspace.ext4") {
			t.Fatalf("qemu-img info: %v %s", err, out)
		}
	}
	// A layer whose parent is outside the store, or a loop, is refused.
	os.Remove(l.Path(a))
	if err := CreateOverlay(l.Path(a), "../../etc/passwd", "raw", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Chain(b); err == nil {
		t.Fatal("chain through a foreign parent accepted")
	}
	// GC keeps the live chain and what is kept, deletes the rest.
	c, _ := l.NewOverlay("workspace.ext4")
	os.Remove(l.Path(a))
	CreateOverlay(l.Path(a), "../workspace.ext4", "raw", 8<<30)
	if err := l.GC(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Path(c)); !os.IsNotExist(err) {
		t.Fatalf("unreferenced %s survived GC", c)
	}
	if _, err := os.Stat(l.Path(a)); err != nil {
		t.Fatalf("live %s deleted: %v", a, err)
	}
	// A frozen layer that changed is refused.
	ref, _, err := l.Ref(a)
	if err != nil || l.Verify(ref) != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(l.Path(a), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("x"))
	f.Close()
	if l.Verify(ref) == nil {
		t.Fatal("a changed layer verified")
	}
}

// TestChainBytes: a snapshot's bytes are its whole chain's (the state it
// keeps), a layer's own bytes only what was written since the one below.
func TestChainBytes(t *testing.T) {
	dir := t.TempDir()
	l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
	if err := os.WriteFile(l.Disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := l.NewOverlay("workspace.ext4")
	if err != nil {
		t.Fatal(err)
	}
	_, own, err := l.Ref(a)
	if err != nil {
		t.Fatal(err)
	}
	total, err := l.ChainBytes(a)
	if err != nil {
		t.Fatal(err)
	}
	root := mustBlocks(t, l, "workspace.ext4")
	if root < 1<<20 || total != own+root {
		t.Fatalf("chain bytes %d, own %d", total, own)
	}
}

func mustBlocks(t *testing.T, l Layers, name string) int64 {
	t.Helper()
	_, _, blocks, err := l.Identity(name)
	if err != nil {
		t.Fatal(err)
	}
	return blocks
}

// TestParentFormatStated: a layer that leaves its parent's format to be
// probed, or states the wrong one, is refused (qemu-img would probe the
// guest-written raw root, where a forged qcow2 header can name a host file).
func TestParentFormatStated(t *testing.T) {
	l := sparseRoot(t, 1<<30)
	a, err := l.NewOverlay("workspace.ext4")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Chain(a); err != nil {
		t.Fatalf("a well-formed chain refused: %v", err)
	}
	os.Remove(l.Path(a))
	if err := CreateOverlay(l.Path(a), "../workspace.ext4", "qcow2", 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Chain(a); err == nil {
		t.Fatal("a qcow2 parent format over a raw root accepted")
	}
}
