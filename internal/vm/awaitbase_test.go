package vm_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// A restored guest waits for its baseline after the restore and before
// the identity call that mounts it: the restore overlaps the build.
func TestWarmBootAwaitsBaseBeforeIdentity(t *testing.T) {
	names := vm.WarmBoot().Names()
	vmmAt, waitAt, idAt := slices.Index(names, vm.StepStartVMM), slices.Index(names, vm.StepAwaitBase), slices.Index(names, vm.StepRefreshIdentity)
	if vmmAt < 0 || waitAt != idAt-1 || waitAt < vmmAt {
		t.Fatalf("warm boot steps: %v", names)
	}
}

// A cold guest mounts its disks as it boots: it waits before its VMM
// starts, and a failed build means no guest at all.
func TestColdBootAwaitsBaseBeforeVMM(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "x"))
	dir.Create()
	c := cfg
	c.ID, c.Dir = "x", dir
	calls := 0
	c.AwaitBase = func(context.Context) error {
		calls++
		if boots, _ := fakevmm.Boots(dir); len(boots) != 0 {
			t.Errorf("the VMM started before the baseline was built: %v", boots)
		}
		return nil
	}
	v, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
	if err != nil {
		t.Fatal(err)
	}
	v.Close(context.Background())
	if calls != 1 {
		t.Fatalf("AwaitBase called %d times", calls)
	}
	c.AwaitBase = func(context.Context) error { return errors.New("build failed") }
	if _, err := vm.BootWith(context.Background(), fakeSteps(), d, c); err == nil || !strings.Contains(err.Error(), "build failed") {
		t.Fatalf("boot with a failed baseline: %v", err)
	}
	if boots, _ := fakevmm.Boots(dir); len(boots) != 1 {
		t.Fatalf("a guest started on a failed baseline: %v", boots)
	}
}
