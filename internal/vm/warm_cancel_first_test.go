package vm

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/envstore"
)

// eagerConn is an agent channel whose deadlines pass the moment they are
// set: of two timers set for one instant, the channel's fires first (which
// of the two does, under load, is chance).
type eagerConn struct{ net.Conn }

func (c eagerConn) SetDeadline(t time.Time) error {
	if !t.IsZero() {
		t = time.Now()
	}
	return c.Conn.SetDeadline(t)
}

// A restore whose caller gives up during the first call is no evidence
// against the snapshot whichever timer fires first: the channel's or the
// caller's context's. Before, the first call set the channel's deadline to
// the context's, and a channel timing out a moment before the context ended
// read as a guest that failed its restore: the snapshot was discarded and
// its build barred (TestCancelledRestoreKeepsSnapshot failed about one run
// in ten under load for that).
func TestCancelledFirstCallKeepsSnapshotWhicheverTimerFires(t *testing.T) {
	envDir, store, key, snap := publishedSnapshot(t)
	dial := func(ctx context.Context) (net.Conn, error) {
		host, err := silentGuest(ctx)
		return eagerConn{host}, err
	}
	v := &VM{ID: "ws1", Environment: envstore.Installed{Dir: envDir}, Agent: agentapi.NewClient(dial),
		Machine: stubMachine{done: make(chan struct{})}}
	defer v.Agent.Close()
	v.warm.snapshot = &snap
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := refreshIdentity(ctx, Deps{Logger: slog.New(slog.DiscardHandler)}, Config{BootTimeout: time.Minute}, v)
	if err == nil {
		t.Fatal("identity refreshed by a guest that never answers")
	}
	if ctx.Err() == nil {
		t.Errorf("the first call gave up before its caller did: %v", err)
	}
	if _, lerr := store.Lookup(key); lerr != nil {
		t.Errorf("snapshot after a cancelled restore: %v (refresh: %v)", lerr, err)
	}
	if why, failed := store.RecentlyFailed(key); failed {
		t.Errorf("build marked failed after a cancelled restore: %s", why)
	}
}
