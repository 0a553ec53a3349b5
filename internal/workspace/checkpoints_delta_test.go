package workspace

import (
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
