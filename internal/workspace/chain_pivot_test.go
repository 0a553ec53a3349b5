package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSettlePivot walks every way a pivot can be found under way and
// checks which layer ends up the top, and that GC keeps both until then.
func TestSettlePivot(t *testing.T) {
	setup := func(t *testing.T, named bool) (Layers, Pivot) {
		dir := t.TempDir()
		l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
		if err := os.WriteFile(l.Disk, []byte("old layer"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(l.Path(LayersDir), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(l.Path("layers/1.raw"), []byte("new layer"), 0o600); err != nil {
			t.Fatal(err)
		}
		size, mtime, blocks, err := l.Identity("workspace.ext4")
		if err != nil {
			t.Fatal(err)
		}
		p := Pivot{Layer: "layers/1.raw", Parent: "workspace.ext4", Size: size, Mtime: mtime, Blocks: blocks}
		if err := l.SetPivot(p); err != nil {
			t.Fatal(err)
		}
		if named {
			if err := l.SetTop("layers/1.raw"); err != nil {
				t.Fatal(err)
			}
		}
		return l, p
	}
	check := func(t *testing.T, l Layers, switched, wantSwitched bool, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		top, _ := l.Top()
		_, newThere := os.Stat(l.Path("layers/1.raw"))
		if _, ok := l.PivotUnderWay(); ok {
			t.Fatal("the record stayed")
		}
		if wantSwitched && (!switched || top != "layers/1.raw" || newThere != nil) {
			t.Fatalf("want the new layer: switched %v top %s", switched, top)
		}
		if !wantSwitched && (switched || top != "workspace.ext4" || newThere == nil) {
			t.Fatalf("want the old layer: switched %v top %s new layer %v", switched, top, newThere)
		}
	}
	live := func(node string) func() (string, error) { return func() (string, error) { return node, nil } }

	t.Run("top not named yet", func(t *testing.T) {
		l, _ := setup(t, false)
		sw, err := l.SettlePivot(live("ws1"))
		check(t, l, sw, false, err)
	})
	t.Run("qemu writes the old layer", func(t *testing.T) {
		l, _ := setup(t, true)
		sw, err := l.SettlePivot(live("ws0"))
		check(t, l, sw, false, err)
	})
	t.Run("qemu writes the new layer", func(t *testing.T) {
		l, _ := setup(t, true)
		sw, err := l.SettlePivot(live("ws1"))
		check(t, l, sw, true, err)
	})
	t.Run("qemu does not answer", func(t *testing.T) {
		l, _ := setup(t, true)
		if _, err := l.SettlePivot(func() (string, error) { return "", errors.New("gone") }); err == nil {
			t.Fatal("settled without an answer")
		}
		if _, ok := l.PivotUnderWay(); !ok {
			t.Fatal("the record went without an answer")
		}
		// GC keeps the old layer (the root disk is not emptied) and the new one.
		if err := l.GC(nil); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(l.Disk); string(b) != "old layer" {
			t.Fatalf("GC emptied the old layer under a pivot: %q", b)
		}
		if _, err := os.Stat(l.Path("layers/1.raw")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no qemu, old layer untouched", func(t *testing.T) {
		l, _ := setup(t, true)
		chain, err := l.LiveChain() // a boot settles it
		if err != nil || len(chain) != 1 || chain[0] != l.Path("layers/1.raw") {
			t.Fatalf("chain %v %v", chain, err)
		}
		check(t, l, true, true, nil)
	})
	t.Run("no qemu, old layer written since", func(t *testing.T) {
		l, _ := setup(t, true)
		later := time.Now().Add(time.Second)
		if err := os.Chtimes(l.Disk, later, later); err != nil {
			t.Fatal(err)
		}
		sw, err := l.SettlePivot(nil)
		check(t, l, sw, false, err)
	})
}
