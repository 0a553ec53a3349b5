package pyro

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A push that finds another push holding the workspace's transfer disk
// waits for it only as long as its own context lasts, then fails
// unavailable with a hint, without touching the disk or the guest.
func TestPushWaitsForTransferDiskWithinContext(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	if err := workspace.EnsureTransferDisk(dir.Path(workspace.TransferFile), 8<<20); err != nil {
		t.Fatal(err)
	}
	other, err := os.OpenFile(dir.Path(workspace.TransferFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := unix.Flock(int(other.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	rec := instance.Record{WorkspaceBase: "base.img", WorkspaceDisk: "upper.img"}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// No agent: the wait must end before anything would reach it.
		_, _, err := pushTar(ctx, dir, rec, nil, "/workspace", bytes.NewReader(make([]byte, 2<<20)))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || errdefs.Hint(err) == "" {
			t.Fatalf("push behind another push: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the push still waits for the transfer disk 5 s after its context ended")
	}
}
