package pyro

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// fakeBaseBuild replaces the baseline build for a test: it writes a small
// image and returns after release closes (or its context ends), with err.
func fakeBaseBuild(t *testing.T, release <-chan struct{}, err error) {
	t.Helper()
	old := buildBaseImage
	t.Cleanup(func() { buildBaseImage = old })
	buildBaseImage = func(ctx context.Context, path string, _ io.Reader, _ int64) (tarutil.Stats, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return tarutil.Stats{}, ctx.Err()
		}
		if err != nil {
			return tarutil.Stats{}, err
		}
		return tarutil.Stats{Files: 3, Bytes: 5}, os.WriteFile(path, []byte("image"), 0o600)
	}
}

// A build that succeeds gives the image's digest and the seed's counts,
// recorded in the workspace.
func TestSeedBuildRecordsCountsAndDigest(t *testing.T) {
	c := newTestClient(t)
	id := recordWorkspace(t, c, "", nil)
	dir := vmdir.Dir(filepath.Join(c.lc.Parent(instance.KindWorkspace), id))
	release := make(chan struct{})
	fakeBaseBuild(t, release, nil)
	img := filepath.Join(t.TempDir(), workspace.BaseFile)
	b := startSeedBuild(context.Background(), img, strings.NewReader("seed"))
	close(release)
	d, err := b.finish(context.Background(), c, dir, workspace.Seed{Mode: "directory"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, n, _ := workspace.ImageDigest(img)
	if d.sum != want || d.n != n {
		t.Fatalf("digest %+v, image %s %d", d, want, n)
	}
	ws, err := c.StatusWorkspace(context.Background(), id)
	if err != nil || ws.WorkspaceSeed.FileCount != 3 || ws.WorkspaceSeed.Bytes != 5 {
		t.Fatalf("seed %+v %v", ws.WorkspaceSeed, err)
	}
	if startSeedBuild(context.Background(), img, nil) != nil {
		t.Fatal("a build without a seed")
	}
}

// A failed build ends the guest's start at once (its context) and is the
// error reported, not the start's cancellation.
func TestSeedBuildFailureStopsTheStart(t *testing.T) {
	release := make(chan struct{})
	close(release)
	fakeBaseBuild(t, release, errors.New("mke2fs: no space"))
	b := startSeedBuild(context.Background(), filepath.Join(t.TempDir(), "img"), strings.NewReader("seed"))
	select {
	case <-b.startCtx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the start was not canceled by the failed build")
	}
	_, err := b.finish(context.Background(), nil, "", workspace.Seed{}, b.startCtx.Err())
	if err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("err %v", err)
	}
}

// A failed start stops the build (its context) and is the error reported.
func TestSeedBuildStopsWhenTheStartFails(t *testing.T) {
	fakeBaseBuild(t, make(chan struct{}), nil) // never released: only a cancel ends it
	b := startSeedBuild(context.Background(), filepath.Join(t.TempDir(), "img"), strings.NewReader("seed"))
	startErr := errors.New("guest did not start")
	done := make(chan error, 1)
	go func() {
		_, err := b.finish(context.Background(), nil, "", workspace.Seed{}, startErr)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, startErr) {
			t.Fatalf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("finish waited for a build the failed start should have stopped")
	}
}
