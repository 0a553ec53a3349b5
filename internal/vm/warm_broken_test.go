package vm

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/golden"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Pool guests restored from one snapshot that die before a claim count
// against it: the snapshot is discarded after golden.MaxBrokenRestores of
// them (so a pool stops restoring a state whose every guest crashes), and
// each death is reported with the console's last lines. A guest still
// running counts nothing; nor does a cold-booted one.
func TestDiedUnusedDiscardsSnapshot(t *testing.T) {
	envDir, store, key, snap := publishedSnapshot(t)
	log := slog.New(slog.DiscardHandler)
	guest := func(m vmm.Machine, start string) *VM {
		dir := vmdir.Dir(t.TempDir())
		_ = os.WriteFile(dir.Path(vmdir.ConsoleLog), []byte("BUG: kernel NULL pointer dereference\nKernel panic - not syncing"), 0o600)
		v := &VM{ID: "g", Dir: dir, Environment: envstore.Installed{Dir: envDir}, Start: start, Machine: m}
		v.warm.snapshot = &snap
		return v
	}
	exited := stubMachine{done: make(chan struct{}), err: errors.New("exit status 1")}
	close(exited.done)

	if _, died := guest(stubMachine{done: make(chan struct{})}, StartWarm).DiedUnused(log, 0); died {
		t.Fatal("a running guest reported dead")
	}
	if note, died := guest(exited, StartCold).DiedUnused(log, 0); !died || !strings.Contains(note, "Kernel panic") {
		t.Fatalf("cold guest: %q %v", note, died)
	}
	for i := 1; i <= golden.MaxBrokenRestores; i++ {
		if _, err := store.Lookup(key); err != nil {
			t.Fatalf("snapshot gone after %d deaths: %v", i-1, err)
		}
		note, died := guest(exited, StartWarm).DiedUnused(log, 0)
		if !died || !strings.Contains(note, "exit status 1") || !strings.Contains(note, "Kernel panic") {
			t.Fatalf("death %d: %q %v", i, note, died)
		}
	}
	if _, err := store.Lookup(key); !errors.Is(err, golden.ErrNotFound) {
		t.Fatalf("snapshot after %d deaths: %v", golden.MaxBrokenRestores, err)
	}
	if why, failed := store.RecentlyFailed(key); !failed || !strings.Contains(why, "Kernel panic") {
		t.Fatalf("not marked failed: %q %v", why, failed)
	}
}
