package vm_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// sealedRAM is a memfd holding b, sealed as vm.SplitForkRAM seals the
// forks' RAM, and its /proc path and inode.
func sealedRAM(t *testing.T, b []byte) (f *os.File, path string, ino uint64) {
	t.Helper()
	fd, err := unix.MemfdCreate("test-fork-ram", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("memfd: %v", err)
	}
	f = os.NewFile(uintptr(fd), "test-fork-ram")
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return f, "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(fd), st.Ino
}

// ramSeen is a fake backend that reads the RAM file a restore maps, as
// QEMU does when it starts.
type ramSeen struct {
	*fakevmm.Backend
	seen []string
}

func (b *ramSeen) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if spec.RestoreRAM != "" {
		ram, err := os.ReadFile(spec.RestoreRAM)
		if err != nil {
			return nil, err
		}
		b.seen = append(b.seen, string(ram))
	}
	return b.Backend.Start(ctx, spec)
}

func bootFork(t *testing.T, b *ramSeen, src vm.ForkSource) error {
	t.Helper()
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "fork"))
	if err := dir.Create(); err != nil {
		t.Fatal(err)
	}
	c := cfg
	c.ID, c.Dir = "fork", dir
	v, err := vm.BootWith(context.Background(), forkSteps(b, src, func() {}), deps(t), c)
	if err == nil {
		v.Close(context.Background())
	}
	return err
}

// The forks' RAM is named by a /proc/<caller>/fd/N path, which names
// whatever that descriptor is when a fork's supervisor opens it: once the
// caller closed the fork's RAM (a fork whose start outlived the call that
// gave up on it) the number may be another fork call's RAM, of another
// workspace, in the same long-lived MCP server. A fork maps only the
// sealed file its caller made for it; before, it mapped whatever the path
// named, another guest's memory included.
func TestForkMapsOnlyItsOwnRAM(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.dev")
	if err := os.WriteFile(state, []byte("devices"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &ramSeen{Backend: fakevmm.New(vmm.Features{NetworkPolicy: true, MemorySnapshot: true})}
	mine, path, ino := sealedRAM(t, []byte("this workspace's memory"))
	src := vm.ForkSource{State: state, Released: true, RAM: path, RAMInode: ino}
	if err := bootFork(t, b, src); err != nil {
		t.Fatal(err)
	}
	if len(b.seen) != 1 || b.seen[0] != "this workspace's memory" {
		t.Fatalf("the fork mapped %q", b.seen)
	}
	mine.Close()
	other, otherPath, _ := sealedRAM(t, []byte("another workspace's memory"))
	defer other.Close()
	if otherPath != path {
		t.Skipf("the descriptor number was not reused (%s, %s)", path, otherPath)
	}
	b.seen = nil
	if err := bootFork(t, b, src); err == nil {
		t.Error("a fork started after its RAM was gone")
	}
	for _, s := range b.seen {
		if s == "another workspace's memory" {
			t.Fatal("a fork mapped another workspace's RAM")
		}
	}
	// Nor an unsealed file of the same name (no inode recorded: refused).
	b.seen = nil
	if err := bootFork(t, b, vm.ForkSource{State: state, Released: true, RAM: otherPath}); err == nil || len(b.seen) != 0 {
		t.Errorf("a fork mapped a RAM file its caller did not name: %v %q", err, b.seen)
	}
}
