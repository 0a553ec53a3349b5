package vm

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/golden"
)

// stubMachine is a VMM that runs nothing: running while done is open,
// exited with err once it is closed.
type stubMachine struct {
	done chan struct{}
	err  error
}

func (m stubMachine) Pid() int                                    { return 1 }
func (m stubMachine) DialAgent(context.Context) (net.Conn, error) { return nil, net.ErrClosed }
func (m stubMachine) Done() <-chan struct{}                       { return m.done }
func (m stubMachine) Err() error                                  { return m.err }
func (m stubMachine) Stop(context.Context) error                  { return nil }

// publishedSnapshot publishes a memory snapshot of a small debian:12
// configuration in a new environment directory.
func publishedSnapshot(t *testing.T) (envDir string, store *golden.Store, key golden.Key, snap golden.Snapshot) {
	t.Helper()
	envDir = t.TempDir()
	store = SnapshotStore(envDir)
	key = golden.Key{Format: golden.Format, Environment: "debian:12", VCPUs: 1, MemMiB: 128, Network: "off"}
	b, _, err := store.Begin(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.StatePath(), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	if snap, err = b.Publish(); err != nil {
		t.Fatal(err)
	}
	return envDir, store, key, snap
}

// TestCancelledRestoreKeepsSnapshot: a restore whose caller gives up during
// the identity refresh (a pool stopping mid-fill) neither discards the
// snapshot nor marks its build failed; before, it did both, and every
// start of that configuration for the next 10 minutes took the slower path.
func TestCancelledRestoreKeepsSnapshot(t *testing.T) {
	envDir, store, key, snap := publishedSnapshot(t)
	v := &VM{ID: "ws1", Environment: envstore.Installed{Dir: envDir}, Agent: agentapi.NewClient(silentGuest),
		Machine: stubMachine{done: make(chan struct{})}}
	defer v.Agent.Close()
	v.warm.snapshot = &snap
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := refreshIdentity(ctx, Deps{Logger: slog.New(slog.DiscardHandler)}, Config{BootTimeout: time.Minute}, v)
	if err == nil {
		t.Fatal("identity refreshed by a guest that never answers")
	}
	if _, err := store.Lookup(key); err != nil {
		t.Errorf("snapshot after a cancelled restore: %v", err)
	}
	if why, failed := store.RecentlyFailed(key); failed {
		t.Errorf("build marked failed after a cancelled restore: %s", why)
	}
	if _, err := os.Stat(filepath.Join(store.Dir(), snap.Manifest.ID)); err != nil {
		t.Errorf("snapshot directory: %v", err)
	}
}
