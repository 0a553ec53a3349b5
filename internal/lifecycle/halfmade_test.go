package lifecycle

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A workspace whose creating process died before it was complete is
// half-made: reconcile removes it. One still being created by a live
// process, and a complete one, stay.
func TestReconcileHalfMade(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	halfMade, _ := f.create(t, newRecord(instance.KindWorkspace))
	if err := os.WriteFile(halfMade.Path(vmdir.Creator), []byte("999999 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creating, _ := f.create(t, newRecord(instance.KindWorkspace))
	if err := instance.WriteCreator(creating); err != nil {
		t.Fatal(err)
	}
	complete, _ := f.create(t, newRecord(instance.KindWorkspace))
	if err := instance.WriteCreator(complete); err != nil {
		t.Fatal(err)
	}
	if err := instance.DoneCreating(complete); err != nil {
		t.Fatal(err)
	}

	r := New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary}).Reconcile(ctx)
	if r.HalfMade != 1 || r.Removed() != 1 || len(r.Failed) != 0 {
		t.Fatalf("report: %+v", r)
	}
	if _, err := os.Stat(string(halfMade)); !errors.Is(err, os.ErrNotExist) {
		t.Error("half-made workspace left")
	}
	for _, d := range []vmdir.Dir{creating, complete} {
		if _, err := os.Stat(string(d)); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}
