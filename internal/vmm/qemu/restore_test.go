package qemu

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// idleMachine is a VMM that never exits.
type idleMachine struct{ done chan struct{} }

func (m idleMachine) Pid() int                                    { return 0 }
func (m idleMachine) DialAgent(context.Context) (net.Conn, error) { return nil, os.ErrInvalid }
func (m idleMachine) Done() <-chan struct{}                       { return m.done }
func (m idleMachine) Err() error                                  { return nil }
func (m idleMachine) Stop(context.Context) error                  { return nil }

// A golden snapshot's restore tells the guest its workspace disk's real
// size (block_resize: the snapshot's guest saw a placeholder); a fork's
// does not: its guest saw this very disk, and a resize would only make
// every fork's kernel re-read the capacity and log it (guest code that a
// restored TCG guest translates afresh).
func TestForkRestoreKeepsDiskSize(t *testing.T) {
	for _, fork := range []bool{false, true} {
		dir := vmdir.Dir(t.TempDir())
		f := &fakeQMP{answer: func(cmd string) (any, string) {
			if cmd == "query-status" {
				return map[string]any{"status": "running"}, ""
			}
			return nil, ""
		}}
		f.serve(t, dir.Path(vmdir.QMPSock))
		state := filepath.Join(t.TempDir(), "state")
		disk := filepath.Join(t.TempDir(), "disk")
		for _, p := range []string{state, disk} {
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		spec := vmm.Spec{Dir: dir, RestoreState: state, WorkspaceDisk: disk, RestoreFork: fork}
		if err := restore(context.Background(), spec, idleMachine{make(chan struct{})}, nil); err != nil {
			t.Fatalf("fork %v: %v", fork, err)
		}
		if resized := slices.Contains(f.commands(), "block_resize"); resized == fork {
			t.Errorf("fork %v: block_resize sent %v (commands %v)", fork, resized, f.commands())
		}
	}
}

// A restore with a Hold (a fork waiting at its gate, vm.ForkGate) calls it
// once, after the state is loaded and before the guest continues: the
// held fork costs no CPU until it is let go.
func TestRestoreHoldsLoadedGuest(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	var mu sync.Mutex
	running := false
	f := &fakeQMP{answer: func(cmd string) (any, string) {
		mu.Lock()
		defer mu.Unlock()
		switch cmd {
		case "cont":
			running = true
		case "query-migrate":
			return map[string]any{"status": "completed"}, ""
		case "query-status":
			if running {
				return map[string]any{"status": "running"}, ""
			}
			return map[string]any{"status": "paused"}, ""
		}
		return nil, ""
	}}
	f.serve(t, dir.Path(vmdir.QMPSock))
	state := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(state, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	holds := 0
	spec := vmm.Spec{Dir: dir, RestoreState: state, RestoreFork: true, Hold: func(context.Context, vmm.Machine) {
		holds++
		if cmds := f.commands(); !slices.Contains(cmds, "query-migrate") || slices.Contains(cmds, "cont") { // loaded, not continued
			t.Errorf("held after %v", cmds)
		}
		time.Sleep(50 * time.Millisecond)
	}}
	if err := restore(context.Background(), spec, idleMachine{make(chan struct{})}, nil); err != nil {
		t.Fatal(err)
	}
	if holds != 1 || !slices.Contains(f.commands(), "cont") {
		t.Fatalf("held %d times; commands %v", holds, f.commands())
	}
}
