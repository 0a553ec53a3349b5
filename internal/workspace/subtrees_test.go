package workspace

import (
	"strconv"

	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// belowByPrefixes is the plain definition subtrees.below must agree with.
func belowByPrefixes(set map[string]bool, p string) bool {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' && set[p[:i]] {
			return true
		}
	}
	return false
}

// slashyPath is a short random path over "a", "b" and "/": empty names,
// leading, trailing and doubled slashes all come up.
func slashyPath(r *rand.Rand) string {
	b := make([]byte, r.IntN(7))
	for i := range b {
		b[i] = "ab/"[r.IntN(3)]
	}
	return string(b)
}

// TestSubtreesAgree: on random paths over a tiny alphabet (empty names,
// leading and doubled slashes included) the set answers as the plain
// definition does.
func TestSubtreesAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var s subtrees
		set := map[string]bool{}
		for i := 0; i < 5; i++ {
			p := slashyPath(r)
			s.add(p)
			set[p] = true
		}
		for i := 0; i < 200; i++ {
			p := slashyPath(r)
			if got, want := s.below(p), belowByPrefixes(set, p); got != want {
				t.Fatalf("set %v, below(%q) = %v, want %v", set, p, got, want)
			}
		}
	}
}

// TestApplyDeltaLongPathLinear: a guest's delta and listing made of paths
// of 200,000 slashes used to cost time quadratic in each path (every
// prefix hashed anew: minutes for this input);
// linear now, milliseconds. The bound is far above the linear walk's
// need, so it fails only on the old behaviour.
func TestApplyDeltaLongPathLinear(t *testing.T) {
	long := strings.Repeat("a/", 200_000)
	var m agentapi.LayerManifest
	for i := 0; i < 30; i++ {
		m.Entries = append(m.Entries, agentapi.LayerEntry{Path: long + strconv.Itoa(i), Kind: "file"})
	}
	// More than a handful of removals: a small map compares lengths
	// first and never hashes.
	var d agentapi.LayerDelta
	for i := 0; i < 20; i++ {
		d.Removed = append(d.Removed, long+"q"+strconv.Itoa(i))
	}
	start := time.Now()
	got := ApplyDelta(m, d)
	if len(got.Entries) != len(m.Entries) {
		t.Fatalf("entries: %d", len(got.Entries))
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("ApplyDelta on long paths took %v", d)
	}
}
