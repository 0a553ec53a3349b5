package supervisor

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A fork's save copies the upper layer under the workspace's layer lock:
// a checkpoint, the supervisor's own housekeeping or a host push that
// holds it may be moving the top (internal/supervisor/fork.go read the top
// without it: attacker's review). The save waits for the holder and
// copies the disk as the holder left it.
func TestForkSaveTakesLayerLock(t *testing.T) {
	b := fakevmm.LiveSaver{Backend: fakevmm.New(vmm.Features{MemorySnapshot: true})}
	steps := fakevmm.Steps(b.Backend).Swap(vm.StepChooseBackend, func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
		v.Use(b, "fake live saver (tests)")
		return nil
	})
	v, err := vm.BootWith(context.Background(), steps, vm.Deps{Dirs: statedir.Dirs{Root: t.TempDir()}}, vm.Config{Environment: "debian:12", VCPUs: 1, MemMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(context.Background())
	dir := vmdir.Dir(t.TempDir())
	disk := dir.Path(workspace.DiskFile)
	if err := os.WriteFile(disk, []byte("before the switch"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &server{dir: dir, rec: instance.Record{WorkspaceDisk: disk}, log: slog.New(slog.DiscardHandler), vm: v}
	s.status.State = instance.Running
	staging := dir.Path(".fork-test")
	if err := os.Mkdir(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	unlock, err := workspace.LockLayers(context.Background(), string(dir))
	if err != nil {
		t.Fatal(err)
	}
	req := ForkSaveRequest{State: filepath.Join(staging, "state"), Disk: filepath.Join(staging, "upper.img")}
	done := make(chan error, 1)
	var res ForkSaveResult
	go func() {
		var err error
		res, err = s.forkSave(context.Background(), req)
		done <- err
	}()
	select {
	case err := <-done:
		unlock()
		t.Fatalf("the save ran while another process held the layer lock (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The holder's switch ends, then it lets go.
	if err := os.WriteFile(disk, []byte("after the switch"), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(req.Disk); err != nil || string(b) != "after the switch" {
		t.Fatalf("forks' disk %q %v", b, err)
	}
	// The saved agent answers a fork's identity in the first-call frame
	// (its health says so): the forks send it there.
	if !res.First {
		t.Fatalf("fork source %+v: the saved agent's first frame not used", res.ForkSource)
	}
}
