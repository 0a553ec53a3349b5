package workspace

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
)

// A guest streaming an endless snapshot is cut at the cap and nothing is
// kept; the number of named snapshots is capped too (#12.8).
func TestSnapshotCaps(t *testing.T) {
	t.Setenv(hostres.SnapshotBytesEnv, "1000")
	t.Setenv(hostres.SnapshotCountEnv, "2")
	s := Snapshots{Dir: t.TempDir()}
	_, err := s.Save("big", io.LimitReader(zeros{}, 1<<30))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), hostres.SnapshotBytesEnv) {
		t.Fatalf("oversized snapshot: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(s.Dir, "*")); len(left) != 0 {
		t.Fatalf("an oversized snapshot left %v", left)
	}
	for _, n := range []string{Baseline, "one", "two"} {
		if _, err := s.Save(n, strings.NewReader("tar")); err != nil {
			t.Fatal(n, err)
		}
	}
	_, err = s.Save("three", strings.NewReader("tar"))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), hostres.SnapshotCountEnv) {
		t.Fatalf("third named snapshot: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// One history line holds at most the cap of the command line.
func TestHistoryLineCap(t *testing.T) {
	t.Setenv(hostres.HistoryLineEnv, "100")
	p := filepath.Join(t.TempDir(), "history.jsonl")
	if err := AppendHistory(p, HistoryEntry{Command: []string{"sh", "-c", strings.Repeat("y", 1<<20)}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if len(b) > 1000 {
		t.Fatalf("history line of %d bytes", len(b))
	}
	h, err := ReadHistory(p)
	if err != nil || len(h) != 1 || h[0].Command[0] != "sh" || !strings.HasSuffix(h[0].Command[2], "...") {
		t.Fatalf("%+v %v", h, err)
	}
}
