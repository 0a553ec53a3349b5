package golden

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A snapshot stays in use after fewer than MaxBrokenRestores guests of it
// died unused; the one that makes MaxBrokenRestores discards it and marks
// its key failed, so starts boot cold instead of restoring it again.
func TestRecordBrokenDiscardsAfterMax(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	k := testKey()
	snap := publish(t, s, k, "device state")
	for i := 1; i < MaxBrokenRestores; i++ {
		discarded, err := s.RecordBroken(snap.Dir, "the VMM exited unexpectedly\nKernel panic")
		if err != nil || discarded {
			t.Fatalf("broken restore %d: discarded %v, err %v", i, discarded, err)
		}
		if _, err := s.Lookup(k); err != nil {
			t.Fatalf("after %d broken restores: %v", i, err)
		}
	}
	discarded, err := s.RecordBroken(snap.Dir, "the VMM exited unexpectedly: \x1b[2J\x00é"+strings.Repeat("x", 4096))
	if err != nil || !discarded {
		t.Fatalf("broken restore %d: discarded %v, err %v", MaxBrokenRestores, discarded, err)
	}
	if _, err := s.Lookup(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup after discard: %v", err)
	}
	why, failed := s.RecentlyFailed(k)
	if !failed || !strings.Contains(why, "died unused") || len(why) > 1024 || strings.ContainsAny(why, "\x1b\x00") || !strings.Contains(why, "é") {
		t.Fatalf("RecentlyFailed = %q, %v", why, failed)
	}
	// A later guest of the discarded snapshot changes nothing.
	if discarded, err := s.RecordBroken(snap.Dir, "late"); err != nil || discarded {
		t.Fatalf("after discard: %v %v", discarded, err)
	}
	// Only the store's own snapshots.
	if _, err := s.RecordBroken(t.TempDir(), "x"); err == nil {
		t.Fatal("a directory outside the store was accepted")
	}
}
