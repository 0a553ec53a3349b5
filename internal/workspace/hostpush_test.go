package workspace

import (
	"bytes"
	"context"
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
	if err := sparseCopy(src, filepath.Join(dir, "capped"), 50000); !errors.Is(err, ErrOverCopyCap) {
		t.Fatalf("over the cap: %v", err)
	}
	if err := sparseCopy(src, dst, 1<<20); err == nil {
		t.Fatal("copied over an existing file")
	}
	// Skipped ranges stay holes; what is around them is copied.
	skipped := filepath.Join(dir, "skipped")
	if err := sparseCopy(src, skipped, 1<<20, Range{8192, 2048}, Range{32<<20 + 4096, 1 << 20}, Range{0, 10}); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(skipped)
	clear(want[8192 : 8192+2048])
	clear(want[32<<20+4096 : 32<<20+100000])
	if !bytes.Equal(got, want) {
		t.Fatal("copy with skipped ranges differs")
	}
	syscall.Stat(skipped, &st)
	if st.Blocks*512 > 100000 {
		t.Fatalf("copy with skipped ranges holds %d bytes", st.Blocks*512)
	}
}

// A host push stages its source on the host's disk (copies of what it
// cannot link): the staging stops once the source holds more than the
// workspace disk could take, instead of copying a source of any size.
func TestStageDirBounded(t *testing.T) {
	src := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(src, n), make([]byte, 600), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(dest, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := StageDir(context.Background(), src, dest, 1000); !errors.Is(err, ErrStageTooLarge) {
		t.Fatalf("err = %v, want ErrStageTooLarge", err)
	}
	if ents, _ := os.ReadDir(dest); len(ents) > 1 {
		t.Fatalf("staged %d files past the bound", len(ents))
	}
	dest2 := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(dest2, 0o700); err != nil {
		t.Fatal(err)
	}
	if st, _, err := StageDir(context.Background(), src, dest2, 1800); err != nil || st.Bytes != 1800 {
		t.Fatalf("within the bound: %+v, %v", st, err)
	}
}
