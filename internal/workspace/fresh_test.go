package workspace

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCopyFreshDisk: the copy replaces the destination with the source's
// bytes and size, holes kept.
func TestCopyFreshDisk(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	_ = f.Truncate(8 << 20)
	_, _ = f.WriteAt([]byte("superblock"), 1024)
	_, _ = f.WriteAt(bytes.Repeat([]byte{7}, 4096), 4<<20)
	f.Close()
	if err := os.WriteFile(dst, []byte("the template's bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CopyFreshDisk(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from the source")
	}
	if err := SyncFile(dst); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) != 0 {
		t.Fatalf("left %v", left)
	}
}

// TestTakeFreshOnce: the fresh mark is read once; no later boot sees it,
// and only the first boot of a marked workspace is told to make its disk
// durable (it was copied unsynced at create).
func TestTakeFreshOnce(t *testing.T) {
	dir := t.TempDir()
	if got, marked := TakeFresh(dir); got != "" || marked {
		t.Fatalf("unmarked: %q, %v", got, marked)
	}
	if err := MarkFresh(dir, "sha256:abc"); err != nil {
		t.Fatal(err)
	}
	if got, marked := TakeFresh(dir); got != "sha256:abc" || !marked {
		t.Fatalf("marked: %q, %v", got, marked)
	}
	if got, marked := TakeFresh(dir); got != "" || marked {
		t.Fatalf("after the first boot: %q, %v", got, marked)
	}
}
