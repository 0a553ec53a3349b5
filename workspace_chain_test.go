package pyro

import (
	"net"
	"os"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// runningQEMU makes dir look like a workspace whose QEMU runs: a QMP socket
// that accepts (and answers nothing), and a live process that is dir's
// VMM. It returns a stop that ends the process as a crash would, leaving
// the socket file behind (QEMU does not remove a socket it was handed).
func runningQEMU(t *testing.T, dir vmdir.Dir) (stop func()) {
	t.Helper()
	lis, err := net.Listen("unix", dir.Path(vmdir.QMPSock))
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	stopVMM, err := fakevmm.StartQEMUProcess(dir)
	if err != nil {
		lis.Close()
		t.Fatal(err)
	}
	stop = func() {
		stopVMM()
		lis.Close()
	}
	t.Cleanup(stop)
	return stop
}

// A workspace's disks are chained through QEMU only while its QEMU runs: a
// QMP socket file left by a stopped or crashed QEMU is not one (it sent a
// stopped workspace's housekeeping into failing QMP calls).
func TestChainableOnlyWhileQEMURuns(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	if chainable(dir) {
		t.Fatal("chainable without a QMP socket")
	}
	stop := runningQEMU(t, dir)
	if !chainable(dir) {
		t.Fatal("not chainable with QEMU running")
	}
	stop()
	if _, err := os.Stat(dir.Path(vmdir.QMPSock)); err != nil {
		t.Fatal("the test meant to leave a stale socket")
	}
	if chainable(dir) {
		t.Fatal("chainable with a stale QMP socket and no QEMU")
	}
}
