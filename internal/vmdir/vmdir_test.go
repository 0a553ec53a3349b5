package vmdir

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/asnobody"
)

// A directory holding a read-only subdirectory (the seed staging tree a
// create killed during its build left) is removed all the same, so
// reconcile and delete do not fail on it for good. Root unlinks in
// read-only directories: as root the test reruns itself as nobody.
func TestRemoveReadOnlyInside(t *testing.T) {
	if asnobody.Rerun(t) {
		return
	}
	parent := t.TempDir()
	d, err := Open(parent, "ws1")
	if err != nil {
		t.Fatal(err)
	}
	ro := d.Path(".seed-1/tree/ro")
	if err := os.MkdirAll(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("left %s", ents[0].Name())
	}
}
