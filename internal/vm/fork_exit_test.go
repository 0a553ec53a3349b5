package vm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// A fork whose VMM exits after its restore fails saying so, with the
// console's last lines: before, the exit cut the identity call short and
// the fork failed "context canceled", which read like the fork command
// giving up (seen in 10-way forks where every fork's QEMU exited).
func TestForkGuestExitsAfterRestore(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "x"))
	dir.Create()
	os.WriteFile(dir.Path(fakevmm.NoAgent), nil, 0o600)
	os.WriteFile(dir.Path(vmdir.ConsoleLog), []byte("kernel panic: test"), 0o600)
	c := cfg
	c.ID, c.Dir = "x", dir
	b := fakevmm.New(vmm.Features{NetworkPolicy: true, MemorySnapshot: true})
	noop := func(context.Context, vm.Deps, vm.Config, *vm.VM) error { return nil }
	steps := vm.ForkBoot(vm.ForkSource{State: filepath.Join(t.TempDir(), "state"), Released: true}).
		Swap(vm.StepResolveEnvironment, noop).
		Swap(vm.StepBuildInitramfs, noop).
		Swap(vm.StepChooseBackend, func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			v.Use(b, "fake backend (tests)")
			return nil
		}).
		InsertAfter(vm.StepConnectAgent, vm.Step{Name: "crash", Run: func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			return fakevmm.Crash(v.Dir)
		}})
	_, err := vm.BootWith(context.Background(), steps, d, c)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "exited after its restore") ||
		!strings.Contains(err.Error(), "fake vmm crashed") || !strings.Contains(err.Error(), "kernel panic: test") {
		t.Fatalf("fork boot: %v", err)
	}
}
