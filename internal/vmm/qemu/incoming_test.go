package qemu

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A restore's state is on QEMU's command line (-incoming fd:N), N being a
// read-only descriptor of the state file handed over at exec, after the
// layer chain's: the load begins as soon as the machine exists, with no
// QMP round trip before it, and QEMU still never opens a snapshot path.
func TestRestoreStateOnCommandLine(t *testing.T) {
	for _, chain := range []int{0, 3} {
		spec := testSpec(t)
		dir := filepath.Dir(spec.Kernel)
		spec.RestoreState = filepath.Join(dir, "state.bin")
		files := []string{spec.RestoreState}
		for i := range chain {
			p := filepath.Join(dir, "layer"+strconv.Itoa(i)+".qcow2")
			spec.WorkspaceChain = append(spec.WorkspaceChain, p)
			files = append(files, p)
		}
		for _, p := range files {
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd, cleanup, err := New("/usr/bin/qemu-system-x86_64", "tcg").Command(spec, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		got := argAfter(cmd.Args, "-incoming", "")
		n, err := strconv.Atoi(strings.TrimPrefix(got, "fd:"))
		if !strings.HasPrefix(got, "fd:") || err != nil {
			cleanup()
			t.Fatalf("chain %d: -incoming %q, want fd:N", chain, got)
		}
		if n-3 != len(cmd.ExtraFiles)-1 {
			t.Errorf("chain %d: state descriptor %d is not the last of %d", chain, n, len(cmd.ExtraFiles))
		} else {
			f := cmd.ExtraFiles[n-3]
			st, _ := f.Stat()
			want, _ := os.Stat(spec.RestoreState)
			if !os.SameFile(st, want) {
				t.Errorf("chain %d: descriptor %d is not the state file", chain, n)
			}
			if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
				t.Errorf("chain %d: state descriptor flags %#x (%v), want read-only", chain, fl, err)
			}
		}
		cleanup()
	}
}

// The restore itself only waits for the load and starts the guest: no
// getfd, no migrate-incoming.
func TestRestoreWaitsOnlyForRunning(t *testing.T) {
	spec := testSpec(t)
	spec.WorkspaceDisk = ""
	spec.RestoreState = filepath.Join(t.TempDir(), "state.bin")
	f := &fakeQMP{answer: func(cmd string) (any, string) {
		if cmd == "query-status" {
			return map[string]any{"status": "running"}, ""
		}
		return nil, ""
	}}
	f.serve(t, spec.Dir.Path(vmdir.QMPSock))
	if err := restore(context.Background(), spec, idleMachine{make(chan struct{})}, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"getfd", "migrate-incoming"} {
		if slices.Contains(f.commands(), c) {
			t.Errorf("restore sent %s (commands %v)", c, f.commands())
		}
	}
}
