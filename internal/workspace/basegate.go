package workspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// A seeded create builds the baseline image while the guest starts: the
// image file exists at its final size before QEMU opens it (PrepareBase),
// the build writes it in place (BuildBase), and a mark beside it
// (BasePendingFile) stays until the image is whole and durable. The guest
// mounts the baseline only after AwaitBase saw the mark go. Until the
// create completes, its creator mark (instance.WriteCreator) makes a
// half-built workspace one that reconcile removes, so the in-place build
// needs no rename of its own.

// BasePendingFile, beside a baseline image, says that it is still being
// built.
const BasePendingFile = "base.pending"

// basePoll paces AwaitBase: the guest it holds back is restoring
// meanwhile, so a few milliseconds of lag cost nothing.
const basePoll = 5 * time.Millisecond

// aliveEvery paces AwaitBase's check that the builder still lives.
const aliveEvery = 100 * time.Millisecond

func pendingPath(image string) string {
	return filepath.Join(filepath.Dir(image), BasePendingFile)
}

// PrepareBase creates the baseline image at path, sparse and empty, at its
// final size (QEMU reads a raw disk's size when it opens it), and marks it
// pending. path must not exist.
func PrepareBase(path string, size int64) error {
	if err := os.WriteFile(pendingPath(path), nil, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// BasePending reports whether the baseline image at path is still being
// built (PrepareBase, not yet BuildBase).
func BasePending(path string) bool {
	_, err := os.Lstat(pendingPath(path))
	return err == nil
}

// AwaitBase returns once the baseline image at path is whole and durable.
// alive says whether the process building it still runs: should it die
// (or ctx end) first, the image is never whole and AwaitBase fails.
func AwaitBase(ctx context.Context, path string, alive func() bool) error {
	t := time.NewTicker(basePoll)
	defer t.Stop()
	last := time.Now()
	for {
		if _, err := os.Lstat(pendingPath(path)); errors.Is(err, os.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if time.Since(last) >= aliveEvery {
			if !alive() {
				return errors.New("the process building it is gone")
			}
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for it: %w", ctx.Err())
		case <-t.C:
		}
	}
}
