package pyro

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A caller waiting for a workspace's layer lock gives up when its context
// ends (unavailable, with a hint), instead of waiting for a stuck holder
// forever; once the holder lets go, the lock is taken.
func TestLockLayersHonoursContext(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	unlock, err := lockLayers(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		u, err := lockLayers(ctx, dir)
		if err == nil {
			u()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want unavailable", err)
		}
	case <-time.After(5 * time.Second):
		unlock()
		t.Fatal("lockLayers waited past its context")
	}
	unlock()
	u, err := lockLayers(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	u()
}
