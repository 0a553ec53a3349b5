package qemu

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
		if err := restore(context.Background(), spec, idleMachine{make(chan struct{})}); err != nil {
			t.Fatalf("fork %v: %v", fork, err)
		}
		if resized := slices.Contains(f.commands(), "block_resize"); resized == fork {
			t.Errorf("fork %v: block_resize sent %v (commands %v)", fork, resized, f.commands())
		}
	}
}
