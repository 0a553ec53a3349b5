package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// TestUpperTrackerDelta: from the paths the kernel would name (the seam
// the fanotify groups fill), a delta applied to the last listing gives
// exactly a fresh walk of the upper directory: files written, chmod'ed,
// removed, linked, a directory made, renamed and removed, a file replaced
// by a directory, a path under a symlink that must not be followed.
func TestUpperTrackerDelta(t *testing.T) {
	up := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(filepath.Join(up, p)), 0o755)
		if err := os.WriteFile(filepath.Join(up, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"a", "d/b", "d/c", "e/f/g", "h"} {
		write(p, p)
	}
	tr := &upperTracker{upper: up, fid: -1, cl: -1}
	m, err := manifest(up)
	if err != nil {
		t.Fatal(err)
	}
	tr.reset(1, m)
	tr.lost = false
	step := func(what string, epoch uint64, do func(), dirty ...string) {
		t.Helper()
		do()
		for _, p := range dirty {
			tr.markDirty(p)
		}
		d, _, err := tr.delta()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		tr.commit(epoch, d)
		want, _ := manifest(up)
		got := map[string]agentapi.LayerEntry{}
		for _, e := range want {
			if tr.view[e.Path] != e {
				t.Errorf("%s: %s listed %+v, walk says %+v", what, e.Path, tr.view[e.Path], e)
			}
			got[e.Path] = e
		}
		for p := range tr.view {
			if _, ok := got[p]; !ok {
				t.Errorf("%s: %s listed, gone from the walk", what, p)
			}
		}
	}
	step("write", 2, func() { write("a", "more") }, "a")
	step("chmod", 3, func() { os.Chmod(filepath.Join(up, "d/b"), 0o600) }, "d/b")
	step("rm", 4, func() { os.Remove(filepath.Join(up, "d/c")) }, "d/c", "d")
	step("mkdir", 5, func() { write("n/m/x", "x") }, "n")
	step("rename dir", 6, func() { os.Rename(filepath.Join(up, "n"), filepath.Join(up, "n2")) }, "n", "n2")
	step("rm -r", 7, func() { os.RemoveAll(filepath.Join(up, "e")) }, "e")
	step("file to dir", 8, func() { os.Remove(filepath.Join(up, "h")); write("h/in", "in") }, "h")
	step("dir to file", 9, func() { os.RemoveAll(filepath.Join(up, "h")); write("h", "back") }, "h")
	// A link's new name is named; the other name's entry (ctime) follows.
	step("hard link", 10, func() { os.Link(filepath.Join(up, "a"), filepath.Join(up, "d/a2")) }, "d/a2")
	// A symlink where a directory was: a path below it is not followed.
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "b"), []byte("outside"), 0o644)
	step("symlink", 11, func() {
		os.RemoveAll(filepath.Join(up, "d"))
		os.Symlink(outside, filepath.Join(up, "d"))
	}, "d", "d/b", "d/a2", "a") // a: its link count (the kernel names the inode)
	if _, ok := tr.view["d/b"]; ok {
		t.Fatal("a path through a symlink is listed")
	}
	// Nothing named: nothing changes.
	d, _, _ := tr.delta()
	if !reflect.DeepEqual(d, agentapi.LayerDelta{Base: 11}) {
		t.Fatalf("delta with nothing named: %+v", d)
	}
}

// TestUpperTrackerBounds: past maxDirtyPaths the tracker gives up (the
// next report lists the layer whole), and a listing it does not hold is
// never the base of a delta.
func TestUpperTrackerBounds(t *testing.T) {
	tr := &upperTracker{upper: t.TempDir(), fid: -1, cl: -1}
	tr.reset(5, nil)
	if tr.usable(4) || tr.usable(0) {
		t.Fatal("a delta against a listing the tracker does not hold")
	}
	tr.lost = false
	for i := 0; i <= maxDirtyPaths; i++ {
		tr.markDirty(filepath.Join("x", string(rune('a'+i%26)), string(rune(i))))
	}
	if !tr.lost {
		t.Fatal("more than maxDirtyPaths paths kept")
	}
}

// TestMarkedTrackerReplacesUnmarked: a tracker whose marks the kernel
// dropped (the upper disk was unmounted: a host push released /workspace)
// is replaced by one that marks the file systems again, and a marked one
// is kept. Before, the first tracker stayed for good and every later
// quiet report was a full listing.
func TestMarkedTrackerReplacesUnmarked(t *testing.T) {
	up, merged := t.TempDir(), t.TempDir()
	unmarked := &upperTracker{upper: up, merged: merged, fid: -1, cl: -1}
	q := &quiet{track: unmarked}
	tr, err := q.markedTracker(up, merged)
	if err != nil {
		t.Skipf("fanotify marks here: %v", err) // needs root and a file system with handles
	}
	t.Cleanup(func() {
		q.mu.Lock()
		q.track = nil
		q.mu.Unlock()
		tr.close()
	})
	if tr == unmarked || !tr.marked() || q.track != tr {
		t.Fatalf("an unmarked tracker was kept: %+v", tr)
	}
	if again, err := q.markedTracker(up, merged); err != nil || again != tr {
		t.Fatalf("a marked tracker was replaced: %v", err)
	}
}
