package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// A start waiting for the host's start lock (held by a start that is stuck)
// gives up when its context ends, unavailable with a hint, and starts
// nothing.
func TestAdmitAndStartHonoursContext(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	holder, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	cmd := exec.Command("true")
	done := make(chan error, 1)
	go func() {
		m, err := New(bin, "tcg").admitAndStart(ctx, cmd, vmm.Spec{Dir: vmdir.Dir(t.TempDir()), MemMiB: 64}, nil)
		if err == nil {
			_ = m.Stop(context.Background())
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want unavailable", err)
		}
		if cmd.Process != nil {
			t.Fatal("started a process without the lock")
		}
	case <-time.After(5 * time.Second):
		_ = unix.Flock(int(holder.Fd()), unix.LOCK_UN)
		<-done
		t.Fatal("admitAndStart waited past its context")
	}
}
