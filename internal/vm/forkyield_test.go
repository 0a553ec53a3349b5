package vm

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/unixsock"
)

// childMachine is a VMM stand-in: a real process (sleep) in a session of
// its own, as a supervisor's QEMU is, whose priority a yield changes.
type childMachine struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startChild(t *testing.T) *childMachine {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &childMachine{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(m.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-m.done })
	return m
}

func (m *childMachine) Pid() int { return m.cmd.Process.Pid }
func (m *childMachine) DialAgent(context.Context) (net.Conn, error) {
	return nil, errors.New("no agent")
}
func (m *childMachine) Done() <-chan struct{}          { return m.done }
func (m *childMachine) Err() error                     { return nil }
func (m *childMachine) Stop(ctx context.Context) error { return m.cmd.Process.Kill() }

// idle reports whether the child runs at idle priority.
func (m *childMachine) idle(t *testing.T) bool {
	t.Helper()
	a, err := unix.SchedGetAttr(m.Pid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return a.Policy == unix.SCHED_IDLE
}

// waitNormal fails t unless the child is back at normal priority soon.
func (m *childMachine) waitNormal(t *testing.T, why string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); m.idle(t); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the VMM is still at idle priority", why)
		}
	}
}

// yielded is a fork's VM over m that the gate at path let go, after its
// yield step: its VMM lowered until the gate's connection closes.
func yielded(t *testing.T, m *childMachine, path string) *VM {
	t.Helper()
	held, ok, err := waitForkGate(context.Background(), path)
	if err != nil || !ok || held == nil {
		t.Fatalf("gate: held %v, let go %v, %v", held, ok, err)
	}
	v := &VM{Machine: m}
	v.holdGate(held)
	if err := forkYield(context.Background(), Deps{Logger: slog.New(slog.DiscardHandler)}, Config{}, v); err != nil {
		t.Fatal(err)
	}
	if !m.idle(t) {
		t.Skip("the VMM was not lowered (this user could not raise it again)")
	}
	return v
}

// A fork that has its identity runs at idle priority while its siblings
// restore, and at its own again once every fork's start returned.
func TestForkYieldsUntilEveryForkRuns(t *testing.T) {
	gate, err := OpenForkGate(filepath.Join(t.TempDir(), "gate.sock"), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	sibling := make(chan net.Conn, 1)
	go func() { // the other fork: it arrives, and is let go with the first
		c, _, _ := waitForkGate(context.Background(), gate.Path())
		sibling <- c
	}()
	m := startChild(t)
	v := yielded(t, m, gate.Path())
	defer v.Close(context.Background())
	gate.Done() // this fork's start returned; its sibling still restores
	time.Sleep(100 * time.Millisecond)
	if !m.idle(t) {
		t.Fatal("back at normal priority while a sibling still restores")
	}
	if c := <-sibling; c != nil {
		defer c.Close()
	}
	gate.Done() // the sibling runs too
	m.waitNormal(t, "every fork runs")
}

// letGoGate serves a stand-in gate at a new path: it lets every fork go
// at once and hands the test its end of each connection (held open).
func letGoGate(t *testing.T) (path string, served <-chan net.Conn) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "gate.sock")
	ln, err := unixsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{1})
			conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	})
	return path, conns
}

// The process serving the gate dies (the fork call was killed): its end
// of the connection closes, and the fork takes its share again.
func TestForkYieldEndsWhenTheGateDies(t *testing.T) {
	path, served := letGoGate(t)
	m := startChild(t)
	v := yielded(t, m, path)
	defer v.Close(context.Background())
	(<-served).Close() // as the kernel closes a dead process's sockets
	m.waitNormal(t, "the gate died")
}

// Never lowered for longer than forkGateWait, whatever the gate does, and
// never after the fork's VM is closed.
func TestForkYieldBounded(t *testing.T) {
	path, _ := letGoGate(t) // it holds every connection open
	old := forkGateWait
	forkGateWait = 300 * time.Millisecond
	m := startChild(t)
	v := yielded(t, m, path)
	forkGateWait = old
	m.waitNormal(t, "after forkGateWait")
	v.Close(context.Background())

	m = startChild(t)
	v = yielded(t, m, path)
	v.Close(context.Background())
	m.waitNormal(t, "the VM closed")
}
