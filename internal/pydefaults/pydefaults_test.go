package pydefaults

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestPythonDefaultsUpToDate fails when python/pyro_mcp/_defaults.py does
// not match defaults.go: run `go generate` in the module root.
func TestPythonDefaultsUpToDate(t *testing.T) {
	got, err := os.ReadFile(filepath.Join("..", "..", Path))
	if err != nil {
		t.Fatal(err)
	}
	if want := Render(); !bytes.Equal(got, want) {
		t.Fatalf("%s is stale (run `go generate` in the module root):\n got:\n%s\nwant:\n%s", Path, got, want)
	}
}
