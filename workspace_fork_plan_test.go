package pyro

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A fork is never visible without its plan (supervisor.ForkFile): once its
// record is written, a concurrent call may name it, and a fork without a
// plan reads as an ordinary stopped workspace - a host push then writes a
// new top under the memory state its first boot restores (the push's
// guard is the plan), a start boots it cold and the plan written after it
// makes a later boot restore a state long gone. Before, the plan was
// written by startFork, after the RAM split, up to ~0.7 s after the fork
// could be named.
func TestForkVisibleOnlyWithItsPlan(t *testing.T) {
	c := newTestClient(t)
	src := vmdir.Dir(t.TempDir())
	disk := filepath.Join(t.TempDir(), "upper.img")
	base := src.Path("base.ext4")
	for _, f := range []string{disk, base} {
		if err := os.WriteFile(f, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srcRec := instance.Record{Kind: instance.KindWorkspace, ID: "src", WorkspaceBase: base, WorkspaceDisk: src.Path("upper.img")}
	plan := []byte(`{"state":"/staging/state"}`)
	var checked int
	made, _, err := c.makeForks(context.Background(), src, srcRec, []string{"", ""}, false, disk, plan, func(_ int, d vmdir.Dir, rec instance.Record, _ <-chan error) {
		checked++
		if _, _, err := c.wsDir(rec.ID); err != nil {
			t.Errorf("fork %s not visible when made: %v", rec.ID, err)
		}
		if b, err := os.ReadFile(d.Path(supervisor.ForkFile)); err != nil || string(b) != string(plan) {
			t.Errorf("fork %s visible without its plan: %q %v", rec.ID, b, err)
		}
	})
	if err != nil || len(made) != 2 || checked != 2 {
		t.Fatalf("made %d (checked %d): %v", len(made), checked, err)
	}
}
