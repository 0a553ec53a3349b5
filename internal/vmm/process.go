package vmm

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Process owns one child process: a single waiter goroutine, an exit
// channel, and a graceful-then-forced stop. Backends embed it.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// StartProcess starts cmd in its own process group (or session, when
// cmd asks for Setsid), killed if pyro dies
// (Pdeathsig), and begins waiting for it.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A new session (Setsid) is a new process group too; setpgid after
	// setsid would fail with EPERM.
	cmd.SysProcAttr.Setpgid = !cmd.SysProcAttr.Setsid
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

// CloseOnExit closes the files a machine's process writes to (its capped
// logs) once the process has been waited for: by then exec's copiers have
// finished with them.
func CloseOnExit(m Machine, files ...io.Closer) {
	go func() {
		<-m.Done()
		for _, f := range files {
			f.Close()
		}
	}()
}

// StartMachine starts cmd as a Machine whose agent listens on
// dir/agent.sock. Its pid goes to dir/vmm.pid; an early exit is explained
// with the end of dir/logName, the process's own log, named by label.
func StartMachine(cmd *exec.Cmd, dir vmdir.Dir, logName, label string) (Machine, error) {
	p, err := StartProcess(cmd)
	if err != nil {
		return nil, err
	}
	_ = os.WriteFile(dir.Path(vmdir.VMMPid), []byte(strconv.Itoa(p.Pid())+"\n"), 0o600)
	return &processMachine{Process: p, dir: dir, logName: logName, label: label}, nil
}

type processMachine struct {
	*Process
	dir     vmdir.Dir
	logName string
	label   string
}

// DialAgent waits for the process to create the agent socket and connects
// to it; it fails at once if the process exits first.
func (m *processMachine) DialAgent(ctx context.Context) (net.Conn, error) {
	return m.DialUnix(ctx, m.dir.Path(vmdir.AgentSock), m.exitError)
}

func (m *processMachine) exitError() error {
	log := m.dir.Path(m.logName)
	return errdefs.New(errdefs.ErrUnavailable, "see "+log, "%s exited (%v): %s", m.label, m.Err(), fsutil.LastLines(log, 5))
}
