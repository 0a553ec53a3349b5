package instance_test

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// VMMPid says alive only while the recorded process is the directory's
// VMM: not before one started, not for a recycled pid (a process of
// another directory, or any other process), not once it exited, reaped or
// not.
func TestVMMPidOnlyWhileItsVMMRuns(t *testing.T) {
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "ws"))
	if err := os.Mkdir(string(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, alive := instance.VMMPid(dir); alive {
		t.Fatal("alive without a vmm.pid")
	}
	stop, err := fakevmm.StartQEMUProcess(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	pid, alive := instance.VMMPid(dir)
	if !alive || pid <= 0 {
		t.Fatalf("VMMPid = %d, %v with its QEMU running", pid, alive)
	}

	other := vmdir.Dir(string(dir) + "-other")
	if err := os.Mkdir(string(other), 0o700); err != nil {
		t.Fatal(err)
	}
	otherStop, err := fakevmm.StartQEMUProcess(other)
	if err != nil {
		t.Fatal(err)
	}
	defer otherStop()
	otherPid, _ := instance.VMMPid(other)
	for _, p := range []int{otherPid, os.Getpid()} {
		if err := os.WriteFile(dir.Path(vmdir.VMMPid), []byte(strconv.Itoa(p)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, alive := instance.VMMPid(dir); alive {
			t.Errorf("pid %d (not this directory's VMM) taken for its VMM", p)
		}
	}

	// Exited, not yet reaped: a zombie is gone.
	if err := os.WriteFile(dir.Path(vmdir.VMMPid), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// WNOWAIT: wait for the exit but leave the zombie in place.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if _, alive := instance.VMMPid(dir); alive {
		t.Error("an exited (zombie) VMM taken for a running one")
	}
	stop()
	if _, alive := instance.VMMPid(dir); alive {
		t.Error("a reaped VMM taken for a running one")
	}
}
