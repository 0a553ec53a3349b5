package vm_test

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// After a live save that let go of the agent session, the source's host
// dials its guest again at once, not at its next call: until a host
// connects, the resumed guest's agent polls its port every 2 ms, which
// under TCG doubled the idle source's CPU through a whole 10-way fork
// (its QEMU 175 ms/s against 80 before the save), CPU the forks' restores
// needed.
func TestSaveLiveReconnectsAtOnce(t *testing.T) {
	b := fakevmm.LiveSaver{Backend: fakevmm.New(vmm.Features{NetworkPolicy: true, MemorySnapshot: true})}
	var dials atomic.Int32
	steps := fakevmm.Steps(b.Backend).
		Swap(vm.StepChooseBackend, func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			v.Use(b, "fake live saver (tests)")
			return nil
		}).
		Swap(vm.StepConnectAgent, func(ctx context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			v.Agent = agentapi.NewClient(func(ctx context.Context) (net.Conn, error) {
				dials.Add(1)
				return v.Machine.DialAgent(ctx)
			})
			v.OnClose(func(context.Context) error { return v.Agent.Close() })
			_, err := v.Agent.WaitReady(ctx)
			return err
		})
	v, err := vm.BootWith(context.Background(), steps, deps(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(context.Background())
	before := dials.Load()
	state, err := os.Create(t.TempDir() + "/state")
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	saved, err := v.SaveLive(context.Background(), state, nil)
	if err != nil || !saved.Released {
		t.Fatalf("save: %+v %v", saved, err)
	}
	for deadline := time.Now().Add(5 * time.Second); dials.Load() == before; {
		if time.Now().After(deadline) {
			t.Fatal("the source's host did not dial its guest again after the save")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The new session serves calls.
	if _, err := v.Agent.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != before+1 {
		t.Fatalf("%d dials after the save, want 1", n-before)
	}
}
