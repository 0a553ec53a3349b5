package workspace

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// chainOver makes a workspace of a 4 MiB raw disk under one overlay of
// size bytes (the size its header claims), the overlay the live top.
func chainOver(t *testing.T, size int64) Layers {
	t.Helper()
	dir := t.TempDir()
	l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
	if err := os.WriteFile(l.Disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(l.Disk, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, LayersDir), 0o700); err != nil {
		t.Fatal(err)
	}
	top := LayersDir + "/1.qcow2"
	if err := CreateOverlay(l.Path(top), "../workspace.ext4", "raw", size); err != nil {
		t.Fatal(err)
	}
	if err := l.SetTop(top); err != nil {
		t.Fatal(err)
	}
	return l
}

// fakeQemuImg puts a qemu-img running script first in PATH.
func fakeQemuImg(t *testing.T, script string) {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "qemu-img"), []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
}

func noFlatCopy(t *testing.T, l Layers) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(l.Dir, ".flat-*")); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestFlattenBounded plays the QEMU that writes the top layer, header
// included: a top claiming a disk larger than any pyro makes is refused
// before qemu-img runs, a qemu-img that hangs is stopped at FlattenTimeout,
// and a copy of another size than the header's is refused; none leaves
// its copy behind. A well-formed chain flattens to exactly its size.
func TestFlattenBounded(t *testing.T) {
	ctx := context.Background()
	if _, err := exec.LookPath("qemu-img"); err == nil {
		l := chainOver(t, 4<<20)
		out, done, err := l.RawUpper(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(out); err != nil || st.Size() != 4<<20 {
			t.Fatalf("flattened copy: %v %v", st, err)
		}
		done()
		noFlatCopy(t, l)
	}

	l := chainOver(t, 2*MaxDiskBytes)
	fakeQemuImg(t, `for a; do out=$a; done; truncate -s 4M "$out"`) // never reached
	start := time.Now()
	_, _, err := l.RawUpper(ctx)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || time.Since(start) > 5*time.Second {
		t.Fatalf("a top claiming %d bytes: %v after %s", int64(2*MaxDiskBytes), err, time.Since(start))
	}
	noFlatCopy(t, l)

	l = chainOver(t, 4<<20)
	fakeQemuImg(t, "exec sleep 60")
	defer func(d time.Duration) { FlattenTimeout = d }(FlattenTimeout)
	FlattenTimeout = 300 * time.Millisecond
	start = time.Now()
	_, _, err = l.RawUpper(ctx)
	if !errors.Is(err, errdefs.ErrUnavailable) || time.Since(start) > 10*time.Second {
		t.Fatalf("a hanging qemu-img: %v after %s", err, time.Since(start))
	}
	noFlatCopy(t, l)
	FlattenTimeout = time.Minute

	fakeQemuImg(t, `for a; do out=$a; done; truncate -s 1T "$out"`)
	_, _, err = l.RawUpper(ctx)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a 1 TiB copy of a 4 MiB disk: %v", err)
	}
	noFlatCopy(t, l)
	t.Log(err)
}
