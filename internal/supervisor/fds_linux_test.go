package supervisor

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCloseInherited(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	inherited, err := unix.Open(p, unix.O_CREAT|unix.O_RDWR, 0o600) // no O_CLOEXEC, as flock(1) leaves it
	if err != nil {
		t.Fatal(err)
	}
	own, err := os.Open(p) // Go's: close-on-exec
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	closeInherited()
	if _, err := unix.FcntlInt(uintptr(inherited), unix.F_GETFD, 0); err != unix.EBADF {
		unix.Close(inherited)
		t.Fatalf("inherited descriptor still open: %v", err)
	}
	if _, err := unix.FcntlInt(own.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatalf("own descriptor closed: %v", err)
	}
}
