package workspace

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// sparseCopy copies what a sparse image holds, keeps its holes, and stops
// past its cap with the copy left to the caller to remove.
func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	f.Truncate(size)
	a, b := bytes.Repeat([]byte("a"), 8192), bytes.Repeat([]byte("b"), 100000)
	f.WriteAt(a, 4096)
	f.WriteAt(b, 32<<20)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := sparseCopy(src, dst, 1<<20); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	want, _ := os.ReadFile(src)
	if !bytes.Equal(got, want) {
		t.Fatal("copy differs")
	}
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("copy holds %d bytes: holes filled", st.Blocks*512)
	}
	if err := sparseCopy(src, filepath.Join(dir, "capped"), 50000); !errors.Is(err, errTooMuch) {
		t.Fatalf("over the cap: %v", err)
	}
	if err := sparseCopy(src, dst, 1<<20); err == nil {
		t.Fatal("copied over an existing file")
	}
}
