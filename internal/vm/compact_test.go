package vm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// upperCompactor "compacts" by upper-casing, or fails after writing a
// little.
type upperCompactor struct{ fail bool }

func (upperCompactor) Save(context.Context, vmdir.Dir, *os.File, func()) error { return nil }
func (upperCompactor) SnapshotIdentity() string                                { return "test" }
func (u upperCompactor) CompactState(in io.Reader, out io.Writer) error {
	b, _ := io.ReadAll(in)
	if u.fail {
		out.Write(b[:2])
		return errors.New("unknown stream")
	}
	_, err := out.Write(bytes.ToUpper(b))
	return err
}

// TestCompactStateReplacesOrKeeps: a snapshot's state file is replaced by
// the backend's compacted copy; when the backend cannot compact it, the
// saved file stays as it was and no partial copy is left beside it.
func TestCompactStateReplacesOrKeeps(t *testing.T) {
	for _, fail := range []bool{false, true} {
		dir := t.TempDir()
		p := filepath.Join(dir, "state.bin")
		if err := os.WriteFile(p, []byte("saved state"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := compactState(upperCompactor{fail: fail}, p)
		got, _ := os.ReadFile(p)
		want := "SAVED STATE"
		if fail {
			want = "saved state"
			if err == nil {
				t.Fatal("a failed compaction was not reported")
			}
		} else if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Fatalf("fail=%t: state %q, want %q", fail, got, want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("fail=%t: %d files left in the build directory", fail, len(ents))
		}
	}
}
