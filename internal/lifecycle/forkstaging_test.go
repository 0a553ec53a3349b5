package lifecycle

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
)

// A `workspace fork` killed with -9 leaves its staging directory (the
// source's saved RAM and upper layer copy) in the source: the next
// reconcile removes it, but not the one of a fork still running (it holds
// the source's lock).
func TestReconcileForkStaging(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	killedDir, _ := f.create(t, newRecord(instance.KindWorkspace))
	killed := filepath.Join(string(killedDir), ".fork-123")
	busyDir, _ := f.create(t, newRecord(instance.KindWorkspace))
	busy := filepath.Join(string(busyDir), ".fork-456")
	for _, p := range []string{killed, busy} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "state"), []byte("saved RAM"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	unlock, err := instance.Lock(ctx, busyDir) // a fork of it is running
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	// f.m reconciled on its first Create; a new manager (a new client)
	// finds the leftover.
	r := New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary}).Reconcile(ctx)
	if r.ForkStaging != 1 || r.Removed() != 1 || len(r.Failed) != 0 {
		t.Fatalf("report: %+v", r)
	}
	if _, err := os.Stat(killed); !os.IsNotExist(err) {
		t.Fatalf("a killed fork's staging survived: %v", err)
	}
	if _, err := os.Stat(filepath.Join(busy, "state")); err != nil {
		t.Fatalf("a running fork's staging removed: %v", err)
	}
}
