package workspace

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

func paths(m agentapi.LayerManifest) string {
	var out []string
	for _, e := range m.Entries {
		out = append(out, e.Path+":"+e.Kind)
	}
	return strings.Join(out, ",")
}

// TestApplyDelta: removals take their subtrees, a non-directory put where a
// directory was takes its old subtree, changed entries replace the old,
// and the result is in the walk's order (parents first, "a/b" before
// "a.c").
func TestApplyDelta(t *testing.T) {
	m := agentapi.LayerManifest{Entries: []agentapi.LayerEntry{
		{Path: "a", Kind: "dir"}, {Path: "a/b", Kind: "file", Size: 1}, {Path: "a.c", Kind: "file"},
		{Path: "d", Kind: "dir"}, {Path: "d/e", Kind: "dir"}, {Path: "d/e/f", Kind: "file"},
		{Path: "g", Kind: "dir"}, {Path: "g/h", Kind: "file"},
	}}
	got := ApplyDelta(m, agentapi.LayerDelta{
		Removed: []string{"d"},
		Changed: []agentapi.LayerEntry{
			{Path: "g", Kind: "file"}, {Path: "a/b", Kind: "file", Size: 2}, {Path: "a/a", Kind: "whiteout"},
			{Path: "d", Kind: "dir"}, {Path: "d/z", Kind: "file"}, {Path: "0", Kind: "symlink"},
		},
	})
	if want := "0:symlink,a:dir,a/a:whiteout,a/b:file,a.c:file,d:dir,d/z:file,g:file"; paths(got) != want {
		t.Fatalf("got %s\nwant %s", paths(got), want)
	}
	if got.Entries[3].Size != 2 {
		t.Fatalf("a/b not replaced: %+v", got.Entries[3])
	}
}

// TestPendingDelta: a delta report against the pending listing the host
// holds builds the next one; against another listing, or past the bound,
// it clears the pending report (the next checkpoint asks the guest).
func TestPendingDelta(t *testing.T) {
	c := Checkpoints{Dir: t.TempDir()}
	full := &agentapi.LayerManifest{Entries: []agentapi.LayerEntry{{Path: "a", Kind: "file"}}}
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 10, Manifest: full}); err != nil {
		t.Fatal(err)
	}
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 11, Delta: &agentapi.LayerDelta{Base: 10, Changed: []agentapi.LayerEntry{{Path: "b", Kind: "file"}}}}); err != nil {
		t.Fatal(err)
	}
	epoch, file, ok := c.TakePending()
	if !ok || epoch != 11 || c.PendingManifest() != 11 {
		t.Fatalf("after a delta: %d %q %v", epoch, file, ok)
	}
	p, _ := c.readPending()
	if p.From != "delta" {
		t.Fatalf("pending from %q", p.From)
	}
	// Against a listing the host does not hold.
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 12, Delta: &agentapi.LayerDelta{Base: 10}}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.TakePending(); ok {
		t.Fatal("a delta against an old listing was kept")
	}
	// Past the bound.
	c.SavePending(&agentapi.QuietReport{Epoch: 20, Manifest: full})
	var big []agentapi.LayerEntry
	for i := 0; len(big)*40 < maxPendingManifestBytes*2; i++ {
		big = append(big, agentapi.LayerEntry{Path: strings.Repeat("x", 20) + string(rune('a'+i%26)) + strings.Repeat("y", i%7) + "/" + string(rune(i)), Kind: "file"})
	}
	c.SavePending(&agentapi.QuietReport{Epoch: 21, Delta: &agentapi.LayerDelta{Base: 20, Changed: big}})
	if _, _, ok := c.TakePending(); ok {
		t.Fatal("a pending listing past its bound was kept")
	}
}

// TestPendingDeltaUnfolded: a delta report is kept as it came (no listing
// decoded and encoded again while the exec waits); the housekeeping folds
// it, a checkpoint that comes first folds it itself, two deltas in a row
// fold the first before keeping the second, and a fold cut short by a
// crash (the folded listing written, pending.json still naming the delta)
// folds again to the same listing.
func TestPendingDeltaUnfolded(t *testing.T) {
	c := Checkpoints{Dir: t.TempDir()}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	full := &agentapi.LayerManifest{Entries: []agentapi.LayerEntry{{Path: "a", Kind: "file"}, {Path: "d", Kind: "dir"}, {Path: "d/x", Kind: "file"}}}
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 10, Manifest: full}); err != nil {
		t.Fatal(err)
	}
	d11 := agentapi.LayerDelta{Base: 10, Removed: []string{"d"}, Changed: []agentapi.LayerEntry{{Path: "b", Kind: "file"}}}
	if err := c.SavePending(&agentapi.QuietReport{Epoch: 11, Delta: &d11}); err != nil {
		t.Fatal(err)
	}
	if exists(c.pendingManifest(11)) || !exists(c.pendingManifest(10)) || !exists(c.pendingDelta(11)) || c.PendingManifest() != 11 {
		t.Fatal("the delta was applied while the exec waited")
	}
	if err := c.FoldPending(); err != nil {
		t.Fatal(err)
	}
	if !exists(c.pendingManifest(11)) || exists(c.pendingManifest(10)) || exists(c.pendingDelta(11)) {
		t.Fatal("fold left the wrong files")
	}
	listing := func() string {
		t.Helper()
		_, f, ok := c.TakePending()
		if !ok {
			t.Fatal("nothing pending")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m agentapi.LayerManifest
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return paths(m)
	}
	if got := listing(); got != "a:file,b:file" {
		t.Fatalf("folded listing %s", got)
	}
	// Two deltas with no housekeeping in between, then a checkpoint.
	_ = c.SavePending(&agentapi.QuietReport{Epoch: 12, Delta: &agentapi.LayerDelta{Base: 11, Changed: []agentapi.LayerEntry{{Path: "c", Kind: "file"}}}})
	_ = c.SavePending(&agentapi.QuietReport{Epoch: 13, Delta: &agentapi.LayerDelta{Base: 12, Removed: []string{"a"}}})
	if c.PendingManifest() != 13 || !exists(c.pendingManifest(12)) || !exists(c.pendingDelta(13)) {
		t.Fatal("the second delta did not fold the first")
	}
	if got := listing(); got != "b:file,c:file" {
		t.Fatalf("listing after two deltas %s", got)
	}
	// A fold cut short: the folded listing is there, pending.json still
	// names the delta.
	d14 := agentapi.LayerDelta{Base: 13, Changed: []agentapi.LayerEntry{{Path: "c", Kind: "dir"}, {Path: "c/e", Kind: "file"}}}
	_ = c.SavePending(&agentapi.QuietReport{Epoch: 14, Delta: &d14})
	p, _ := c.readPending()
	folded, err := c.applyPendingDelta(13, d14)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.pendingManifest(14), folded, 0o600); err != nil {
		t.Fatal(err)
	}
	if q, _ := c.readPending(); q != p || q.Base != 13 {
		t.Fatalf("pending %+v", q)
	}
	if got := listing(); got != "b:file,c:dir,c/e:file" {
		t.Fatalf("listing after a fold cut short %s", got)
	}
}
