package pyro

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
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

// Housekeeping that takes the layer lock without a caller's context
// (dropping unreferenced layers or a checkpoint) waits for it at most
// housekeepingLockWait: before, a stuck holder held it forever.
func TestHousekeepingLockWaitBounded(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	if err := os.MkdirAll(dir.Path(workspace.LayersDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir.Path(workspace.LayersDir), "top"), []byte("1.qcow2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := instance.Record{WorkspaceDisk: dir.Path(workspace.DiskFile)}
	if !layersOf(dir, rec).Chained() {
		t.Fatal("fixture: layers not chained")
	}
	unlock, err := lockLayers(context.Background(), dir) // the stuck holder
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	saved := housekeepingLockWait
	housekeepingLockWait = 100 * time.Millisecond
	defer func() { housekeepingLockWait = saved }()
	done := make(chan error, 2)
	go func() { done <- dropUnreferenced(dir, rec) }()
	go func() { (*Client)(nil).dropCheckpoint(dir, 1); done <- nil }()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("got %v, want unavailable", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("housekeeping waited for the layer lock past its bound")
		}
	}
}
