package vm_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// forkSteps are a fork's boot steps over the fake backend; running is
// called when the restored guest is let go (its identity call next).
func forkSteps(b vmm.Backend, src vm.ForkSource, running func()) vm.Steps {
	noop := func(context.Context, vm.Deps, vm.Config, *vm.VM) error { return nil }
	return vm.ForkBoot(src).
		Swap(vm.StepResolveEnvironment, noop).
		Swap(vm.StepBuildInitramfs, noop).
		Swap(vm.StepChooseBackend, func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			v.Use(b, "fake backend (tests)")
			return nil
		}).
		InsertAfter(vm.StepStartVMM, vm.Step{Name: "running", Run: func(context.Context, vm.Deps, vm.Config, *vm.VM) error {
			running()
			return nil
		}})
}

// bootForks boots n forks of src over the fake backend at once (fork i
// after delay(i)), telling the gate when each start returned, and returns
// when each began and when each was let go (ran) and was done.
func bootForks(t *testing.T, n int, src vm.ForkSource, gate *vm.ForkGate, delay func(int) time.Duration) (began, ran, done []time.Time) {
	b := fakevmm.New(vmm.Features{NetworkPolicy: true, MemorySnapshot: true})
	began, ran, done = make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			time.Sleep(delay(i))
			began[i] = time.Now()
			dir := vmdir.Dir(filepath.Join(t.TempDir(), fmt.Sprint("f", i)))
			dir.Create()
			c := cfg
			c.ID, c.Dir = fmt.Sprint("f", i), dir
			v, err := vm.BootWith(context.Background(), forkSteps(b, src, func() {
				ran[i] = time.Now()
				time.Sleep(50 * time.Millisecond) // the guest's identity call
			}), deps(t), c)
			done[i] = time.Now()
			gate.Done()
			if err != nil {
				t.Error(err)
				return
			}
			v.Close(context.Background())
		})
	}
	wg.Wait()
	return began, ran, done
}

// With a gate, no fork runs before every fork has loaded its state (the
// last one here starts 300 ms after the others): the forks already loaded
// wait paused; then they run `parallel` at a time, the next when one is
// done. Before the gate, each fork ran as soon as it was restored.
func TestForkRestoresHeldUntilAllLoaded(t *testing.T) {
	const n = 4
	gate, err := vm.OpenForkGate(filepath.Join(t.TempDir(), "gate.sock"), n, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	src := vm.ForkSource{State: filepath.Join(t.TempDir(), "state"), Released: true, Gate: gate.Path()}
	began, ran, done := bootForks(t, n, src, gate, func(i int) time.Duration {
		if i == n-1 {
			return 300 * time.Millisecond
		}
		return 0
	})
	for i := range n {
		if ran[i].Before(began[n-1]) {
			t.Errorf("fork %d ran %v before the last fork started loading", i, began[n-1].Sub(ran[i]))
		}
		// At most 2 run at once: when fork i runs, at most one other
		// fork has run and is not yet done.
		others := 0
		for j := range n {
			if j != i && !ran[j].After(ran[i]) && done[j].After(ran[i]) {
				others++
			}
		}
		if others > 1 {
			t.Errorf("fork %d ran beside %d others", i, others)
		}
	}
	if _, arrived, ok := gate.Loaded(); !ok || arrived != n {
		t.Errorf("gate full %v with %d arrived, want %d", ok, arrived, n)
	}
}

// A fork whose sibling never arrives (its start failed: Done) is not held
// for it; a fork whose gate is gone continues at once: the gate orders
// restores, it never fails one.
func TestForkGateNeverHoldsForever(t *testing.T) {
	gate, err := vm.OpenForkGate(filepath.Join(t.TempDir(), "gate.sock"), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	go func() {
		time.Sleep(200 * time.Millisecond)
		gate.Done()
	}()
	src := vm.ForkSource{State: filepath.Join(t.TempDir(), "state"), Released: true, Gate: gate.Path()}
	began, _, done := bootForks(t, 1, src, gate, func(int) time.Duration { return 0 })
	if took := done[0].Sub(began[0]); took < 150*time.Millisecond || took > 5*time.Second {
		t.Errorf("held %v, want until its sibling was gone (~200 ms)", took)
	}
	src.Gate = filepath.Join(t.TempDir(), "no-gate.sock")
	began, _, done = bootForks(t, 1, src, gate, func(int) time.Duration { return 0 })
	if took := done[0].Sub(began[0]); took > 5*time.Second {
		t.Errorf("without a gate: held %v", took)
	}
}
