package pyro

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A host push killed while it staged its source (kill -9 of the CLI: no
// deferred removal) left its staging in the workspace directory for good,
// copies of the source included; the next push of the workspace sweeps
// it, read-only directories and all, and nothing else.
func TestSweepPushStaging(t *testing.T) {
	d := t.TempDir()
	stale := filepath.Join(d, pushStagingPrefix+"123", "tree", "ro")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "copy"), make([]byte, 1<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(stale, 0o555); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(d, "layers")
	if err := os.Mkdir(keep, 0o700); err != nil {
		t.Fatal(err)
	}
	sweepPushStaging(vmdir.Dir(d))
	if _, err := os.Lstat(filepath.Join(d, pushStagingPrefix+"123")); !os.IsNotExist(err) {
		t.Fatalf("stale staging still there: %v", err)
	}
	if _, err := os.Lstat(keep); err != nil {
		t.Fatalf("swept more than staging: %v", err)
	}
}

// A fork made but not yet started restores a memory state that expects its
// disk as forked: a host push must leave that disk alone (the push goes
// through the guest, which waits for the fork to run).
func TestHostPushLeavesUnstartedFork(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	if err := os.WriteFile(dir.Path(supervisor.ForkFile), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := instance.Record{ID: "fork1", WorkspaceBase: "base.img", WorkspaceDisk: "upper.img"}
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root); !errors.Is(err, errNotHere) {
		t.Fatalf("push into an unstarted fork: err = %v, want the guest's path", err)
	}
	if _, err := os.Stat(dir.Path(workspace.LayersDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the host push touched the fork's layers: %v", err)
	}
}
