package workspace

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestReachChainAsChain: the chains GC walks with reachChain, sharing what
// earlier walks read, reach the same layers with the same chain lengths as
// Chain reads them one by one; a chain Chain cannot read (a damaged layer
// above a shared part) reaches nothing of its own, and GC then deletes its
// unread layers as before while keeping every layer a readable chain
// reaches.
func TestReachChainAsChain(t *testing.T) {
	l := sparseRoot(t, 1<<30)
	dir := l.Dir
	over := func(parent string) string {
		t.Helper()
		n, err := l.NewOverlay(parent)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A live chain of 6 and two branches off it (an undo's new chain
	// keeps the old checkpoints), one of them with a damaged layer.
	live := []string{"workspace.ext4"}
	for range 6 {
		live = append(live, over(live[len(live)-1]))
	}
	side := over(live[3])
	sideTop := over(side)
	bad := over(live[2])
	badTop := over(bad)
	if err := os.WriteFile(l.Path(bad), []byte("not a layer"), 0o600); err != nil {
		t.Fatal(err)
	}
	ends := []string{live[6], live[4], sideTop, badTop, live[1]}
	reach := map[string]int{}
	for _, end := range ends {
		want, werr := l.Chain(end)
		before := len(reach)
		err := l.reachChain(end, reach)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%s: reachChain %v, Chain %v", end, err, werr)
		}
		if werr != nil {
			if _, ok := reach[end]; ok || len(reach) != before {
				t.Fatalf("%s: an unreadable chain reached layers", end)
			}
			continue
		}
		for i, n := range want {
			if reach[n] != i+1 {
				t.Fatalf("%s: %s at length %d, Chain says %d", end, n, reach[n], i+1)
			}
		}
	}
	if err := l.SetTop(live[6]); err != nil {
		t.Fatal(err)
	}
	if err := l.GC([]string{live[4], sideTop, badTop}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, LayersDir))
	var left []string
	for _, e := range ents {
		if e.Name() != topFile {
			left = append(left, LayersDir+"/"+e.Name())
		}
	}
	want := append(slices.Clone(live[1:]), side, sideTop)
	slices.Sort(left)
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("GC left %v, want %v", left, want)
	}
}
