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

// runningMachine is a VMM that never exits.
type runningMachine struct{ done chan struct{} }

func (m runningMachine) Pid() int                                    { return 1 }
func (m runningMachine) DialAgent(context.Context) (net.Conn, error) { return nil, net.ErrClosed }
func (m runningMachine) Done() <-chan struct{}                       { return m.done }
func (m runningMachine) Err() error                                  { return nil }
func (m runningMachine) Stop(context.Context) error                  { return nil }

// TestCancelledRestoreKeepsSnapshot: a restore whose caller gives up during
// the identity refresh (a pool stopping mid-fill) neither discards the
// snapshot nor marks its build failed; before, it did both, and every
// start of that configuration for the next 10 minutes took the slower path.
func TestCancelledRestoreKeepsSnapshot(t *testing.T) {
	envDir := t.TempDir()
	store := SnapshotStore(envDir)
	key := golden.Key{Format: golden.Format, Environment: "debian:12", VCPUs: 1, MemMiB: 128, Network: "off"}
	b, _, err := store.Begin(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.StatePath(), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Publish()
	if err != nil {
		t.Fatal(err)
	}
	stuck := func(context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := guest.Read(buf); err != nil {
					return
				}
			}
		}()
		return host, nil
	}
	v := &VM{ID: "ws1", Environment: envstore.Installed{Dir: envDir}, Agent: agentapi.NewClient(stuck),
		Machine: runningMachine{done: make(chan struct{})}}
	defer v.Agent.Close()
	v.warm.snapshot = &snap
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = refreshIdentity(ctx, Deps{Logger: slog.New(slog.DiscardHandler)}, Config{BootTimeout: time.Minute}, v)
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
