package fsutil

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// Writers of one cache file at once (two pyro processes refreshing the
// same environment's stamps): the file is always one writer's content
// whole, and no temporary file is left.
func TestWriteCacheConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.json")
	contents := make([][]byte, 8)
	for i := range contents {
		contents[i] = bytes.Repeat([]byte{byte('a' + i)}, (i+1)*128<<10) // sizes differ: a shorter writer truncating a longer one shows
	}
	var wg sync.WaitGroup
	for round := 0; round < 20; round++ {
		for _, c := range contents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := WriteCache(path, c, 0o644); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(contents, func(c []byte) bool { return bytes.Equal(c, got) }) {
			t.Fatalf("round %d: cache holds %d bytes that no writer wrote whole", round, len(got))
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left in the directory: %d entries, want only the cache", len(ents))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
}
