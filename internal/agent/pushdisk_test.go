package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTransferDiskStopsWhenHostGaveUp: once the call's context is done
// (the host timed out and may free or refill the disk for its next push),
// the extraction reads nothing more from the disk, so it cannot take the
// next push's bytes for this one's files.
func TestTransferDiskStopsWhenHostGaveUp(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "transfer.img")
	want := bytes.Repeat([]byte("pushed01"), 2*sector/8)
	if err := os.WriteFile(disk, want, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(ctx context.Context) *transferDisk {
		fd, err := unix.Open(disk, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		mem, err := unix.Mmap(-1, 0, 2*directChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		d := &transferDisk{ctx: ctx, fd: fd, length: int64(len(want)), win: mem[:directChunk:directChunk], buf: mem[directChunk:], mem: mem}
		t.Cleanup(d.close)
		return d
	}
	got, err := io.ReadAll(open(context.Background()))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := open(ctx).Read(make([]byte, sector)); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after the host gave up: %v", err)
	}
}
