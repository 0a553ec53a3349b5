package caplog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// A guest that floods its console takes at most twice the cap on disk, and
// the newest bytes are kept.
func TestCapRotatesOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	w, err := Open(p, 100)
	if err != nil {
		t.Fatal(err)
	}
	line := bytes.Repeat([]byte("x"), 29)
	line = append(line, '\n')
	for i := 0; i < 10000; i++ {
		if n, err := w.Write(line); n != len(line) || err != nil {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
	}
	w.Write([]byte("LAST\n"))
	w.Close()
	cur, _ := os.ReadFile(p)
	old, _ := os.ReadFile(p + ".1")
	if len(cur) > 100 || len(old) > 100 || len(old) == 0 {
		t.Fatalf("sizes %d and %d, cap 100", len(cur), len(old))
	}
	if !bytes.HasSuffix(cur, []byte("LAST\n")) {
		t.Fatalf("newest output lost: %q", cur)
	}
	// One write larger than the cap keeps its tail.
	w, _ = Open(p, 10)
	w.Write([]byte("0123456789ABCDEF"))
	w.Close()
	if cur, _ := os.ReadFile(p); string(cur) != "6789ABCDEF" {
		t.Fatalf("big write kept %q", cur)
	}
}
