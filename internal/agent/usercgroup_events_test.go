package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestUnpopulatedRereads: the kept-open cgroup.events is read afresh on
// every call (a cached "populated 0" would let a quiet exec claim an
// epoch while a user process runs), a missing file says populated, and
// a file that appears later is opened then.
func TestUnpopulatedRereads(t *testing.T) {
	dir := t.TempDir()
	u := &userCgroup{dir: dir}
	events := filepath.Join(dir, "cgroup.events")
	if u.unpopulated() {
		t.Fatal("no cgroup.events: unpopulated")
	}
	set := func(populated string) {
		t.Helper()
		// In place, as the kernel changes it: the descriptor stays valid.
		if err := os.WriteFile(events, []byte("populated "+populated+"\nfrozen 0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		populated string
		want      bool
	}{{"0", true}, {"1", false}, {"0", true}, {"1", false}} {
		set(step.populated)
		if got := u.unpopulated(); got != step.want {
			t.Fatalf("populated %s: unpopulated %v, want %v", step.populated, got, step.want)
		}
	}
	if err := os.WriteFile(events, []byte("frozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if u.unpopulated() {
		t.Fatal("no populated line: unpopulated")
	}
}
