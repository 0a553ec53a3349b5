package agentapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Service defaults the agent applies when a request leaves a field at 0.
const (
	DefaultServiceReadyTimeoutMS  = 30_000
	DefaultServiceReadyIntervalMS = 500
	DefaultServiceLogTailLines    = 200
	// ServiceLogBytes bounds each service's in-memory log; older output is
	// dropped (ServiceLogs.Truncated).
	ServiceLogBytes = 1 << 20
	// ServiceStopGraceMS is how long Stop waits after SIGTERM before it
	// sends SIGKILL to the service's process group.
	ServiceStopGraceMS = 5_000
)

// Readiness probe types.
const (
	ProbeFile    = "file"
	ProbeTCP     = "tcp"
	ProbeHTTP    = "http"
	ProbeCommand = "command"
)

// Service states.
const (
	// ServiceStarting: the process runs and the readiness probe has not
	// passed yet (only while a start request waits).
	ServiceStarting = "starting"
	// ServiceRunning: the process runs; it was started without a probe, or
	// its readiness probe passed (then ReadyAt is set). There is no separate
	// "ready" state: the contract's running_service_count counts these.
	ServiceRunning = "running"
	// ServiceExited: the process ended on its own with exit code 0.
	ServiceExited = "exited"
	// ServiceFailed: the process ended on its own with a non-zero code or
	// a signal, or it never became ready (the agent then stopped it).
	ServiceFailed = "failed"
	// ServiceStopped: stopped by a stop or reset request.
	ServiceStopped = "stopped"
)

// ServiceReadiness is a readiness probe, run by the agent inside the guest
// every ReadyIntervalMS until it passes or ReadyTimeoutMS passes.
type ServiceReadiness struct {
	// Type is ProbeFile, ProbeTCP, ProbeHTTP or ProbeCommand.
	Type string `json:"type"`
	// Path (file): passes once it exists; relative to the service's cwd.
	Path string `json:"path,omitempty"`
	// Address (tcp): "host:port" that must accept a connection. A bare
	// "port" or ":port" means 127.0.0.1.
	Address string `json:"address,omitempty"`
	// URL (http): a GET must answer ExpectStatus, or any 2xx/3xx when
	// ExpectStatus is 0. Redirects are not followed.
	URL          string `json:"url,omitempty"`
	ExpectStatus int    `json:"expect_status,omitempty"`
	// Command (command): run with /bin/sh -c in the service's cwd and env;
	// passes when it exits 0. Each attempt is killed after 5 s.
	Command string `json:"command,omitempty"`
}

// ServiceStartRequest starts a named service. Exactly one of Argv and Shell
// is set (as in ExecRequest).
type ServiceStartRequest struct {
	// Name matches ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$.
	Name  string   `json:"name"`
	Argv  []string `json:"argv,omitempty"`
	Shell string   `json:"shell,omitempty"`
	// Cwd must exist; empty means /workspace if it is a directory, else /.
	Cwd string `json:"cwd,omitempty"`
	// Env is merged over the default environment, as for Exec.
	Env       map[string]string `json:"env,omitempty"`
	Readiness *ServiceReadiness `json:"readiness,omitempty"`
	// SecretEnv maps secret names to env var names for this start only.
	SecretEnv map[string]string `json:"secret_env,omitempty"`
	// ReadyTimeoutMS bounds the wait for readiness; 0 means
	// DefaultServiceReadyTimeoutMS.
	ReadyTimeoutMS int64 `json:"ready_timeout_ms,omitempty"`
	// ReadyIntervalMS is the pause between probe attempts; 0 means
	// DefaultServiceReadyIntervalMS.
	ReadyIntervalMS int64 `json:"ready_interval_ms,omitempty"`
}

// ServiceStatus describes one service.
type ServiceStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Argv is the command as run (a shell command is /bin/sh -c CMD).
	Argv      []string          `json:"argv"`
	Cwd       string            `json:"cwd"`
	Readiness *ServiceReadiness `json:"readiness,omitempty"`
	// PID is the service's process (also its process group id).
	PID int `json:"pid"`
	// ExitCode is set once the process has ended (128+n when killed by
	// signal n); Signal names that signal.
	ExitCode     *int       `json:"exit_code,omitempty"`
	Signal       string     `json:"signal,omitempty"`
	StartedAt    time.Time  `json:"started_at"`
	ReadyAt      *time.Time `json:"ready_at,omitempty"`
	StoppedAt    *time.Time `json:"stopped_at,omitempty"`
	RestartCount int        `json:"restart_count"`
	// LastProbeError is the readiness probe's most recent failure.
	LastProbeError string `json:"last_probe_error,omitempty"`
	// Error says why the service failed to become ready, if it did.
	Error string `json:"error,omitempty"`
}

// Active reports whether the service's process is (still) running:
// states starting and running.
func (s ServiceStatus) Active() bool {
	switch s.State {
	case ServiceStarting, ServiceRunning:
		return true
	}
	return false
}

// ServiceList is the reply of GET /v1/services, sorted by name.
type ServiceList struct {
	Services []ServiceStatus `json:"services"`
}

// ServiceLogs is the tail of a service's merged stdout+stderr.
type ServiceLogs struct {
	Name string `json:"name"`
	// Lines without their trailing newlines; a final unterminated line is
	// included.
	Lines []string `json:"lines"`
	// Truncated: the bounded log dropped early output (the first kept
	// partial line is left out).
	Truncated bool `json:"truncated"`
	// State of the service when the logs were read.
	State string `json:"state"`
}

// ServiceReset is the reply of POST /v1/services/reset.
type ServiceReset struct {
	// Stopped counts services that were still running.
	Stopped int `json:"stopped"`
	// Removed counts all records forgotten.
	Removed int `json:"removed"`
}

// serviceStopTimeout bounds stop and reset: the agent waits up to
// ServiceStopGraceMS before SIGKILL (services stop in parallel on reset).
const serviceStopTimeout = ServiceStopGraceMS*time.Millisecond + CallTimeout

// serviceProbeAttemptTimeout is how long the agent lets one probe attempt
// run (a command probe is killed after it).
const serviceProbeAttemptTimeout = 5 * time.Second

// startServiceTimeout bounds a start: the readiness wait, a last probe
// attempt, stopping a service that never became ready, and the grace.
func startServiceTimeout(req ServiceStartRequest) time.Duration {
	ready := time.Duration(req.ReadyTimeoutMS) * time.Millisecond
	if req.ReadyTimeoutMS <= 0 {
		ready = DefaultServiceReadyTimeoutMS * time.Millisecond
	}
	return ready + serviceProbeAttemptTimeout + serviceStopTimeout
}

func servicePath(name string, suffix string) string {
	return PathServices + "/" + url.PathEscape(name) + suffix
}

// StartService starts a service and returns once it is ready (or at once,
// state running, without a readiness probe). A service that does not
// become ready is stopped, and the error (failed_precondition) carries the
// probe's last error and the service's last log lines. A name that is
// still running is already_exists. Cancelling ctx while waiting stops the
// service.
func (c *Client) StartService(ctx context.Context, req ServiceStartRequest) (ServiceStatus, error) {
	var st ServiceStatus
	err := c.jsonCall(ctx, startServiceTimeout(req), http.MethodPost, PathServices, req, &st)
	return st, err
}

// ListServices returns all services the agent knows, sorted by name.
func (c *Client) ListServices(ctx context.Context) ([]ServiceStatus, error) {
	var l ServiceList
	if err := c.jsonCall(ctx, callTimeout, http.MethodGet, PathServices, nil, &l); err != nil {
		return nil, err
	}
	return l.Services, nil
}

// ServiceStatus returns one service; unknown names are not_found.
func (c *Client) ServiceStatus(ctx context.Context, name string) (ServiceStatus, error) {
	var st ServiceStatus
	err := c.jsonCall(ctx, callTimeout, http.MethodGet, servicePath(name, ""), nil, &st)
	return st, err
}

// ServiceLogs returns the last tailLines lines of a service's log (0 means
// DefaultServiceLogTailLines), or everything kept when all is set.
func (c *Client) ServiceLogs(ctx context.Context, name string, tailLines int, all bool) (ServiceLogs, error) {
	q := url.Values{}
	if tailLines != 0 {
		q.Set("tail_lines", strconv.Itoa(tailLines))
	}
	if all {
		q.Set("all", "true")
	}
	p := servicePath(name, "/logs")
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var l ServiceLogs
	err := c.jsonCallLimit(ctx, callTimeout, MaxServiceLogsReplyBytes, http.MethodGet, p, nil, &l)
	return l, err
}

// StopService sends SIGTERM to the service's process group, SIGKILL after
// ServiceStopGraceMS, and returns the final status. Stopping a service that
// already ended is not an error.
func (c *Client) StopService(ctx context.Context, name string) (ServiceStatus, error) {
	var st ServiceStatus
	err := c.jsonCall(ctx, serviceStopTimeout, http.MethodPost, servicePath(name, "/stop"), nil, &st)
	return st, err
}

// ResetServices stops every service and forgets them all.
func (c *Client) ResetServices(ctx context.Context) (ServiceReset, error) {
	var r ServiceReset
	err := c.jsonCall(ctx, serviceStopTimeout, http.MethodPost, PathServicesReset, nil, &r)
	return r, err
}
