package pyro

import (
	"context"
	"errors"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/names"
)

// Services are named long-running processes in a workspace (dev servers,
// databases), supervised by the guest agent. A typed readiness probe,
// checked inside the guest, decides when StartService returns.

// StartServiceOptions describe a service. Zero values take the contract
// defaults: cwd /workspace, no readiness probe, ready timeout 30 s,
// probe interval 500 ms.
type StartServiceOptions struct {
	// Command is an argv; a single element is run by /bin/sh -c.
	Command             []string
	Cwd                 string
	Env                 map[string]string
	Readiness           *Readiness
	ReadyTimeoutSeconds int
	ReadyIntervalMS     int
	// SecretEnv maps secret names to environment variable names for this
	// start only ("" means the secret's own name).
	SecretEnv map[string]string
	// Publish forwards host loopback ports to guest ports while the service
	// runs: "[HOST_PORT:]GUEST_PORT" (no host port: a free one). Needs the
	// egress+published-ports network policy (services_publish.go).
	Publish []string
}

// LogsServiceOptions select how much log to return (default: last 200 lines).
type LogsServiceOptions struct {
	TailLines int
	All       bool
}

// StartService starts a named service in a workspace and, with a readiness
// probe, returns once it is ready. When the probe does not pass in time the
// service is stopped and the error carries the probe's last error and the
// service's last log lines. Starting a name that is running is refused.
func (c *Client) StartService(ctx context.Context, workspaceID, name string, opts StartServiceOptions) (Service, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	if !names.IsIdentifier(name) {
		return Service{}, errdefs.New(errdefs.ErrInvalidArgument, "use letters, digits, '.', '_' and '-', up to 64 characters", "invalid service name %q", name)
	}
	if len(opts.Command) == 0 {
		return Service{}, errdefs.New(errdefs.ErrInvalidArgument, "pass the command after --", "no command for service %q", name)
	}
	if opts.Cwd == "" {
		opts.Cwd = WorkspaceDir
	}
	if opts.ReadyTimeoutSeconds == 0 {
		opts.ReadyTimeoutSeconds = DefaultReadyTimeoutSeconds
	}
	if opts.ReadyIntervalMS == 0 {
		opts.ReadyIntervalMS = DefaultReadyIntervalMS
	}
	if opts.ReadyTimeoutSeconds < 0 || opts.ReadyIntervalMS < 0 {
		return Service{}, errdefs.New(errdefs.ErrInvalidArgument, "use positive values", "negative readiness timing")
	}
	req := agentapi.ServiceStartRequest{
		Name: name, Cwd: opts.Cwd, Env: opts.Env, Readiness: opts.Readiness.wire(), SecretEnv: opts.SecretEnv,
		ReadyTimeoutMS: int64(opts.ReadyTimeoutSeconds) * 1000, ReadyIntervalMS: int64(opts.ReadyIntervalMS),
	}
	if len(opts.Command) == 1 {
		req.Shell = opts.Command[0]
	} else {
		req.Argv = opts.Command
	}
	pub, err := c.publishBegin(ctx, workspaceID, opts.Publish)
	if err != nil {
		return Service{}, err
	}
	var out Service
	if dir, rec, err := c.wsDir(workspaceID); err == nil {
		if err := c.checkpointFor(ctx, dir, rec, "service start "+name); err != nil {
			return Service{}, err
		}
	}
	err = c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		st, err := a.StartService(ctx, req)
		out = serviceFrom(workspaceID, st)
		return err
	})
	ports, perr := pub.end(ctx, name, err)
	out.PublishedPorts = ports
	return out, errors.Join(err, perr)
}

// ListServices lists a workspace's services.
func (c *Client) ListServices(ctx context.Context, workspaceID string) ([]Service, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	out := []Service{}
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		list, err := a.ListServices(ctx)
		for _, s := range list {
			out = append(out, serviceFrom(workspaceID, s))
		}
		return err
	})
	withPorts(out, c.servicePorts(ctx, workspaceID))
	return out, err
}

// StatusService returns one service's status.
func (c *Client) StatusService(ctx context.Context, workspaceID, name string) (Service, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	var out Service
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		st, err := a.ServiceStatus(ctx, name)
		out = serviceFrom(workspaceID, st)
		return err
	})
	out.PublishedPorts = c.servicePorts(ctx, workspaceID)[name]
	if out.PublishedPorts == nil {
		out.PublishedPorts = []PublishedPort{}
	}
	return out, err
}

// LogsService returns a service's log tail (default 200 lines; All for
// everything the bounded log still holds).
func (c *Client) LogsService(ctx context.Context, workspaceID, name string, o *LogsServiceOptions) (ServiceLogs, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	var opts LogsServiceOptions // nil: the contract defaults
	if o != nil {
		opts = *o
	}
	if opts.TailLines == 0 {
		opts.TailLines = DefaultLogTailLines
	}
	var out ServiceLogs
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		l, err := a.ServiceLogs(ctx, name, opts.TailLines, opts.All)
		out = serviceLogsFrom(workspaceID, l)
		return err
	})
	return out, err
}

// StopService stops a service: SIGTERM to its process group, SIGKILL after
// a grace period. Stopping a stopped service returns its status.
func (c *Client) StopService(ctx context.Context, workspaceID, name string) (Service, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	var out Service
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		st, err := a.StopService(ctx, name)
		out = serviceFrom(workspaceID, st)
		return err
	})
	c.unpublishService(ctx, workspaceID, name)
	out.PublishedPorts = []PublishedPort{}
	return out, err
}

// withWorkspaceAgent runs f with an agent client of a workspace, restarting
// the workspace when needed.
func (c *Client) withWorkspaceAgent(ctx context.Context, id string, f func(*agentapi.Client) error) error {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return err
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return err
	}
	defer agent.Close()
	return f(agent)
}

// serviceCounts returns how many services a running workspace has and how
// many of them are alive (starting or running). Errors count as none:
// status must not fail because the guest is busy.
func serviceCounts(ctx context.Context, agent *agentapi.Client) (total, running int) {
	list, err := agent.ListServices(ctx)
	if err != nil {
		return 0, 0
	}
	return countServices(list)
}

// countServices counts list's services, and those of them running.
func countServices(list []agentapi.ServiceStatus) (total, running int) {
	for _, s := range list {
		if s.Active() {
			running++
		}
	}
	return len(list), running
}
