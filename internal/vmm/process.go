package vmm

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/unixsock"
)

// Process owns one child process: a single waiter goroutine, an exit
// channel, and a graceful-then-forced stop. Backends embed it.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// StartProcess starts cmd in its own process group, killed if pyro dies
// (Pdeathsig), and begins waiting for it.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *Process) Pid() int              { return p.cmd.Process.Pid }
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error once Done is closed (nil for exit 0).
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Stop sends SIGTERM to the process group, waits until ctx ends (or 3 s
// when ctx has no deadline), then SIGKILLs the group.
func (p *Process) Stop(ctx context.Context) error {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
			}
		}
	})
	select {
	case <-p.done:
		return nil
	default:
		return fmt.Errorf("process %d did not exit", p.Pid())
	}
}

// Kill SIGKILLs the process group and waits for the exit.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// DialUnix waits for the process to create the unix socket at path and
// connects to it. It fails at once, with exitErr(), if the process exits
// first, and with ctx's error when ctx ends.
func (p *Process) DialUnix(ctx context.Context, path string, exitErr func() error) (net.Conn, error) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if unixsock.Exists(path) {
			if c, err := unixsock.Dial(ctx, path); err == nil {
				return c, nil
			}
		}
		select {
		case <-p.done:
			return nil, exitErr()
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}
