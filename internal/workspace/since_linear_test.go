package workspace

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// hiddenByPrefixes is the plain definition of "below an entry that hides
// its subtree" that stateOf must agree with.
func hiddenByPrefixes(up map[string]agentapi.LayerEntry, p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		if a, ok := up[p[:i]]; ok && (a.Kind != "dir" || a.Opaque) {
			return true
		}
	}
	return false
}

// TestStateOfAgrees: on random listings and paths over a tiny alphabet
// (empty names, leading and doubled slashes included) stateOf hides what
// the plain definition hides.
func TestStateOfAgrees(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	kinds := []string{"dir", "file", "whiteout", "symlink"}
	for round := 0; round < 300; round++ {
		var m agentapi.LayerManifest
		for i := 0; i < 6; i++ {
			m.Entries = append(m.Entries, agentapi.LayerEntry{Path: slashyPath(r), Kind: kinds[r.IntN(len(kinds))], Opaque: r.IntN(3) == 0})
		}
		up := indexUpper(m)
		for i := 0; i < 200; i++ {
			p := slashyPath(r)
			if _, listed := up.entries[p]; listed {
				continue
			}
			got := stateOf(up, BaseIndex{kinds: map[string]string{p: "file"}}, p).exists
			if want := !hiddenByPrefixes(up.entries, p); got != want {
				t.Fatalf("listing %+v: %q exists %v, want %v", m.Entries, p, got, want)
			}
		}
	}
}

// TestCompareManifestsLongPathLinear: two listings of a guest's (diff
// --since, checkpoint list's bytes_changed) made of paths of 200,000
// slashes, each in one listing only, used to cost time quadratic in each
// path (every prefix hashed anew: minutes for this input, hours for a
// listing of MaxManifestBytes); linear now, milliseconds. The bound is far
// above the linear walk's need, so it fails only on the old behaviour.
func TestCompareManifestsLongPathLinear(t *testing.T) {
	long := strings.Repeat("a/", 200_000)
	var a, b agentapi.LayerManifest
	for i := 0; i < 30; i++ {
		a.Entries = append(a.Entries, agentapi.LayerEntry{Path: long + strconv.Itoa(i), Kind: "file"})
		b.Entries = append(b.Entries, agentapi.LayerEntry{Path: long + "q" + strconv.Itoa(i), Kind: "file"})
	}
	start := time.Now()
	d := CompareManifests(a, b, BaseIndex{})
	if len(d.Added) != 30 || len(d.Deleted) != 30 {
		t.Fatalf("added %d, deleted %d", len(d.Added), len(d.Deleted))
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("CompareManifests on long paths took %v", el)
	}
}
