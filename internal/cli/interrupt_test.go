package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBrokenPipeCancels(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	bw := &brokenPipeWriter{w: w, name: "stdout", cancel: cancel}
	if _, err := bw.Write([]byte("read\n")); err != nil || ctx.Err() != nil {
		t.Fatalf("write to a live pipe: %v, ctx %v", err, ctx.Err())
	}
	r.Close() // the reader goes away
	if _, err := bw.Write([]byte("lost\n")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a broken pipe: %v", err)
	}
	i, ok := interruptedBy(ctx)
	if !ok || i.exitCode() != 141 || !strings.Contains(i.Error(), "broken pipe on stdout") {
		t.Fatalf("cause %v", context.Cause(ctx))
	}
}

func TestOtherWriteErrorsDoNotCancel(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	bw := &brokenPipeWriter{w: f, name: "stdout", cancel: cancel}
	if _, err := bw.Write([]byte("x")); err == nil || ctx.Err() != nil {
		t.Fatalf("write to a closed file: %v, ctx %v", err, ctx.Err())
	}
}

func TestSignalsCancelWithTheirExitCode(t *testing.T) {
	for sig, code := range map[syscall.Signal]int{syscall.SIGHUP: 129, syscall.SIGINT: 130, syscall.SIGTERM: 143} {
		ctx, cancel := context.WithCancelCause(context.Background())
		stop := watchSignals(cancel, false)
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v did not cancel", sig)
		}
		stop()
		if i, ok := interruptedBy(ctx); !ok || i.exitCode() != code {
			t.Errorf("%v: cause %v, want exit code %d", sig, context.Cause(ctx), code)
		}
	}
}

// TestWatchParent re-runs this test binary under a shell that exits at
// once: the orphaned child must notice and cancel.
func TestWatchParent(t *testing.T) {
	if out := os.Getenv("PYRO_TEST_WATCH_PARENT"); out != "" {
		ctx, cancel := context.WithCancelCause(context.Background())
		watchParent(ctx, cancel)
		_ = os.WriteFile(out+".ready", nil, 0o600)
		select {
		case <-ctx.Done():
			_ = os.WriteFile(out, []byte(context.Cause(ctx).Error()), 0o600)
		case <-time.After(20 * time.Second):
		}
		os.Exit(0)
	}
	out := filepath.Join(t.TempDir(), "cause")
	// The shell waits until the child watches, then exits, orphaning it.
	sh := exec.Command("sh", "-c", `"$0" -test.run '^TestWatchParent$' & while [ ! -e "$1.ready" ]; do sleep 0.01; done`, os.Args[0], out)
	sh.Env = append(os.Environ(), "PYRO_TEST_WATCH_PARENT="+out)
	if b, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(out)
		if err == nil {
			if !strings.Contains(string(b), "parent process") {
				t.Fatalf("cause %q", b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphaned child did not notice its parent exit")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
