package fsutil

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// LockContext takes an exclusive flock on f, waiting until ctx ends (then
// it returns ctx.Err()). A blocking flock(2) cannot be interrupted, so it
// polls the non-blocking lock, from 1 ms backing off to 50 ms.
func LockContext(ctx context.Context, f *os.File) error {
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
