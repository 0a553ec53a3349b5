package pyro

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
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
