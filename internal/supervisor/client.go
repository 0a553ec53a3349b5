package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Spawn starts a detached supervisor for dir using the pyro binary. The
// supervisor gets its own session so that a terminal's Ctrl-C or the
// caller's exit does not reach it; its output goes to the VM's log.
func Spawn(binary string, dir vmdir.Dir) error { return spawn(binary, dir, nil) }

// spawn is Spawn with a change to the command (a pooled supervisor's link).
func spawn(binary string, dir vmdir.Dir, adjust func(*exec.Cmd)) error {
	logf, err := os.OpenFile(dir.Path(vmdir.SupervisorLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd := exec.Command(binary, Arg, string(dir))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if adjust != nil {
		adjust(cmd)
	}
	if err := cmd.Start(); err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "check that "+binary+" is the pyro binary", "start supervisor")
	}
	// Reap it whenever it exits, so a long-lived caller (an MCP server)
	// collects no zombies; a short-lived one just leaves it to init.
	go func() { _ = cmd.Wait() }()
	return nil
}

// Client talks to one supervisor.
type Client struct {
	dir  vmdir.Dir
	http *http.Client
	// release closes a connection dialled ahead and never used
	// (DialAhead); nil for a plain client.
	release func()
}

// NewClient returns a client for the supervisor of dir.
func NewClient(dir vmdir.Dir) *Client {
	return newClient(dir, func(ctx context.Context) (net.Conn, error) { return dialSock(ctx, dir) })
}

func newClient(dir vmdir.Dir, dial func(context.Context) (net.Conn, error)) *Client {
	return &Client{dir: dir, http: &http.Client{Transport: &http.Transport{
		DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		IdleConnTimeout: 10 * time.Second,
	}}}
}

// Close closes the client's connections: idle ones, and one dialled ahead
// and never used.
func (c *Client) Close() {
	if c.release != nil {
		c.release()
	}
	c.http.CloseIdleConnections()
}

func dialSock(ctx context.Context, dir vmdir.Dir) (net.Conn, error) {
	return unixsock.Dial(ctx, dir.Path(vmdir.SupervisorSock))
}

// statusDeadline bounds a status request: the supervisor's own health call
// to the guest plus a second for the supervisor itself.
const statusDeadline = HealthDeadline + time.Second

// Status asks the supervisor for its status. It fails fast when no
// supervisor answers: callers then observe the directory instead.
func (c *Client) Status(ctx context.Context) (Status, error) { return c.StatusWait(ctx, 0) }

// StatusWait is Status, but while the guest is still starting the
// supervisor holds the answer until the boot ends or wait passed.
func (c *Client) StatusWait(ctx context.Context, wait time.Duration) (Status, error) {
	var st Status
	ctx, cancel := context.WithTimeout(ctx, statusDeadline+wait)
	defer cancel()
	url := "http://pyro-supervisor/v1/status"
	if wait > 0 {
		url += "?wait=" + strconv.FormatInt(wait.Milliseconds(), 10)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("supervisor status: http %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Stop asks the supervisor to power the guest off and waits (until ctx
// ends) for the supervisor process to exit.
func (c *Client) Stop(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://pyro-supervisor/v1/stop", nil)
	if resp, err := c.http.Do(req); err == nil {
		resp.Body.Close()
	}
	return WaitExit(ctx, c.dir)
}

// WaitExit waits until the supervisor of dir is gone.
func WaitExit(ctx context.Context, dir vmdir.Dir) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, alive := instance.SupervisorPid(dir); !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return errdefs.Wrap(errdefs.ErrUnavailable, ctx.Err(), "", "supervisor of %s did not exit", dir)
		case <-tick.C:
		}
	}
}

// Kill SIGKILLs the supervisor of dir, if alive; its VMM dies with it.
func Kill(dir vmdir.Dir) {
	if pid, alive := instance.SupervisorPid(dir); alive {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// The VMM has Pdeathsig, but kill it by pid too in case it outlived
	// us (never a recycled pid: VMMPid checks what the process is).
	if pid, alive := instance.VMMPid(dir); alive {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Agent returns an agent client that goes through the supervisor's proxy.
func (c *Client) Agent() *agentapi.Client {
	return agentapi.NewProxiedClient(func(ctx context.Context) (net.Conn, error) { return dialSock(ctx, c.dir) }, AgentPrefix)
}

// Observe returns the observed state of the instance in dir: the
// supervisor's own answer when it is up, else what its exit note, its
// process and the record say.
func Observe(ctx context.Context, dir vmdir.Dir, rec instance.Record) Status {
	return ObserveWait(ctx, dir, rec, 0)
}

// ObserveWait is Observe, but a supervisor whose guest is still starting
// answers when the boot ends (or wait passed) rather than at once.
func ObserveWait(ctx context.Context, dir vmdir.Dir, rec instance.Record, wait time.Duration) Status {
	pid, alive := instance.SupervisorPid(dir)
	if alive {
		if st, err := NewClient(dir).StatusWait(ctx, wait); err == nil {
			return st
		}
		// Serve writes its exit note before it stops serving and removes
		// any old one before it listens: a note beside a live supervisor
		// that no longer answers is one on its way out, and says why.
		if n, ok := instance.ReadExit(dir); ok {
			return Status{State: n.State, Cause: n.Cause, Reason: n.Reason}
		}
		return Status{State: instance.Broken, Cause: instance.CauseSupervisorSilent,
			Reason: "supervisor is alive but not answering", SupervisorPID: pid}
	}
	if n, ok := instance.ReadExit(dir); ok {
		return Status{State: n.State, Cause: n.Cause, Reason: n.Reason}
	}
	if rec.ExpiresAt != nil && time.Now().After(*rec.ExpiresAt) {
		return Status{State: instance.Expired, Cause: instance.CauseTTL, Reason: "ttl passed"}
	}
	if pid == 0 {
		return Status{State: instance.Created}
	}
	return Status{State: instance.Broken, Cause: instance.CauseSupervisorGone, Reason: "supervisor exited without a clean stop (killed?)"}
}
