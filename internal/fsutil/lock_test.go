package fsutil

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A lock held elsewhere is waited for until the context ends, and taken
// once it is let go.
func TestLockContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	open := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	holder, waiter := open(), open()
	if err := LockContext(context.Background(), holder); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := LockContext(ctx, waiter); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lock held elsewhere: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the wait outlived its context by %s", d)
	}
	go func() { time.Sleep(50 * time.Millisecond); holder.Close() }()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := LockContext(ctx, waiter); err != nil {
		t.Fatalf("lock let go: %v", err)
	}
}
