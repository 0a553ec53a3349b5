package workspace

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// concurrently runs f from n goroutines at once and returns the first error.
func concurrently(n int, f func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- f()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Two writers of one file each write through a temp file of their own: with
// one fixed "name.tmp" the first rename took the other's file away (its
// rename failed) or published it half written.
func TestReplaceFileConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for i := range 200 {
		p := filepath.Join(tree, "d", strings.Repeat("n", 1+i%50)+string(rune('a'+i%26)))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx := filepath.Join(dir, BaseIndexFile)
	if err := concurrently(8, func() error {
		for range 20 {
			if err := writeBaseIndex(tree, idx); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("base index: %v", err)
	}
	b, err := ReadBaseIndex(idx)
	if err != nil || b.Has("d") != "dir" || len(b.names) != len(b.kinds) || len(b.names) < 200 {
		t.Fatalf("index %v %d", err, len(b.names))
	}

	log := filepath.Join(dir, EventsFile)
	for i := range 100 {
		if err := AppendEvent(log, Event{Kind: EventFileWrite, Path: "x", Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := concurrently(8, func() error {
		for range 10 {
			if err := keepNewerHalf(log); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("events: %v", err)
	}
	if ev, err := ReadEvents(log); err != nil || len(ev) == 0 || ev[len(ev)-1].Count != 99 {
		t.Fatalf("events after %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*tmp*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

// Two makers of one disk image: each runs mke2fs on a file of its own.
func TestCreateDiskConcurrent(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("needs mke2fs")
	}
	p := filepath.Join(t.TempDir(), DiskFile)
	if err := concurrently(4, func() error { return CreateDisk(context.Background(), p, 16<<20) }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("disk %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "*tmp*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}
