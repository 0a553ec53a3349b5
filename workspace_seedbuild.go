package pyro

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A seeded create builds the baseline image on the host while the guest
// starts: the restore (QEMU, its state, the kernel coming back) takes as
// long as unpacking and mke2fs of a few hundred MiB, and the guest reads
// nothing of the baseline until the identity call mounts it, which waits
// for the build (internal/workspace/basegate.go). The image's digest is
// read right after the build, from the page cache, while the guest
// mounts it.

// seedBuild is a baseline being built.
type seedBuild struct {
	// startCtx is for the guest's start: it ends when the build fails, so
	// the start stops waiting for a guest that will never mount anything.
	startCtx    context.Context
	cancelStart context.CancelFunc
	cancelBuild context.CancelFunc
	done        chan struct{}

	st   tarutil.Stats
	base baseDigest
	err  error
}

// buildBaseImage builds a baseline image (a seam for tests).
var buildBaseImage = workspace.BuildBase

// startSeedBuild builds the baseline image at path (made by
// workspace.PrepareBase) from the tar stream src in the background; nil
// when there is no seed (src nil).
func startSeedBuild(ctx context.Context, path string, src io.Reader) *seedBuild {
	if src == nil {
		return nil
	}
	b := &seedBuild{done: make(chan struct{})}
	b.startCtx, b.cancelStart = context.WithCancel(ctx)
	bctx, cancelBuild := context.WithCancel(ctx)
	b.cancelBuild = cancelBuild
	go func() {
		defer close(b.done)
		b.st, b.err = buildBaseImage(bctx, path, src, workspace.DiskBytes())
		if b.err == nil {
			b.base.sum, b.base.n, b.err = workspace.ImageDigest(path)
		}
		if b.err != nil {
			b.cancelStart()
		}
	}()
	return b
}

// finish waits for the build after the guest's start ended with startErr
// (a failed start stops the build first) and records the seed's counts.
// A failed build is the error to report: the start failed because of it.
func (b *seedBuild) finish(ctx context.Context, c *Client, dir vmdir.Dir, seed workspace.Seed, startErr error) (baseDigest, error) {
	defer b.cancelStart()
	if startErr != nil {
		b.cancelBuild()
	}
	<-b.done
	b.cancelBuild()
	if b.err != nil && (startErr == nil || !errors.Is(b.err, context.Canceled)) {
		return baseDigest{}, fmt.Errorf("seed /workspace: %w", b.err)
	}
	if startErr != nil {
		return baseDigest{}, startErr
	}
	seed.FileCount, seed.Bytes = b.st.Files, b.st.Bytes
	err := c.lc.Update(ctx, dir, instance.KindWorkspace, func(r *instance.Record) error {
		m := metaOf(*r)
		m.Seed = seed
		setMeta(r, m)
		return nil
	})
	return b.base, err
}
