package vm

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/envstore"
)

// A restored guest that takes a run's command with its identity and then
// does not answer may have started the command: the restore is a failure
// (the snapshot goes), but not one that Boot retries cold, which would run
// the command a second time. Without a command the same silence is an
// ordinary failed restore, retried cold.
func TestFirstCallCommandNeverRetriedCold(t *testing.T) {
	for _, withCommand := range []bool{true, false} {
		envDir, store, key, snap := publishedSnapshot(t)
		v := &VM{ID: "run1", Environment: envstore.Installed{Dir: envDir}, Agent: agentapi.NewClient(silentGuest),
			Machine: stubMachine{done: make(chan struct{})}}
		v.warm.snapshot = &snap
		c := Config{BootTimeout: 300 * time.Millisecond}
		if withCommand {
			c.FirstExec = &agentapi.ExecRequest{Shell: "curl -X POST http://example.invalid/charge"}
		}
		err := refreshIdentity(context.Background(), Deps{Logger: slog.New(slog.DiscardHandler)}, c, v)
		v.Agent.Close()
		if err == nil {
			t.Fatalf("command %v: identity refreshed by a silent guest", withCommand)
		}
		var wf *warmFailure
		if retried := errors.As(err, &wf); retried == withCommand {
			t.Errorf("command %v: retried cold %v: %v", withCommand, retried, err)
		}
		if got := errors.Is(err, agentapi.ErrCommandHandedOver); got != withCommand {
			t.Errorf("command %v: handed over %v: %v", withCommand, got, err)
		}
		if _, lerr := store.Lookup(key); lerr == nil {
			t.Errorf("command %v: snapshot kept after its guest did not answer", withCommand)
		}
	}
}
