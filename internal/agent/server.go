// Package agent is pyro's guest agent: the PID-1 init of a guest (Init), the
// agent server process it starts (RunChild), and the HTTP API both the guest
// and host-compat serve over a yamux session (New(opts).Serve, or
// ServeListener for a stream of host connections). The wire protocol is
// documented in internal/agentapi.
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Options configures an Agent. Everything an agent keeps across host
// connections (services, shells, secrets) lives in the Agent that New
// builds from them, never in package variables.
type Options struct {
	// Logger receives the agent's own diagnostics; nil discards them.
	Logger *slog.Logger
	// Shutdown is called (once per request, after the reply is sent) when
	// the host asks the guest to power off. Nil makes /v1/shutdown reply
	// failed_precondition.
	Shutdown func()
	// Version is reported as agent_version; empty means the build info.
	Version string
	// Boot milestones reported by /v1/health (ms since kernel start).
	InitStartedMS, RootReadyMS, AgentStartedMS int64
	// SecretsDir is where /v1/secrets materialises secrets; empty means
	// agentapi.SecretsDir, which gets a tmpfs of its own. Another directory
	// (tests) is used as is.
	SecretsDir string
	// WorkspaceDir is synced (syncfs) after every exec and push, and is
	// the default cwd of services and shells when it exists; empty means
	// WorkspaceDir.
	WorkspaceDir string
	// LayerLowerDir and LayerUpperMount are where a layered /workspace's
	// baseline and upper disk are mounted; empty means the guest's
	// LayerLowerDir and LayerUpperMount.
	LayerLowerDir, LayerUpperMount string
	// Env is the environment every command starts from; nil means
	// DefaultEnv().
	Env map[string]string
	// UserCgroup is the cgroup v2 directory (made by init, see
	// UserCgroupDir) in which user commands, services and shells run,
	// each in a leaf of its own; empty runs them without one
	// (host-compat, tests).
	UserCgroup string
	// Credential, when set, is the user every command, service and shell
	// runs as (an OCI image's User); the agent itself stays root.
	Credential *syscall.Credential
	// RefuseCommands, when set, fails every command, service and shell
	// at start with this error (ImageDefaults.Refuse).
	RefuseCommands error
	// DefaultCwd is the cwd of an exec that names none (an OCI image's
	// WorkingDir); empty means "/".
	DefaultCwd string
}

// DefaultEnv is the environment commands start from unless Options.Env
// says otherwise.
func DefaultEnv() map[string]string {
	return map[string]string{
		"PATH": DefaultPath,
		"HOME": "/root",
		"LANG": "C.UTF-8",
		"TERM": "xterm-256color",
	}
}

// DefaultPath is PATH in DefaultEnv, and init's own PATH.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Agent serves the agent API. One Agent lives as long as its process; the
// host may connect many times (Serve per connection, or ServeListener),
// and services, shells and secrets outlive each connection.
type Agent struct {
	opts         Options
	log          *slog.Logger
	env          map[string]string
	workspaceDir string
	secrets      *secretStore
	user         *userCgroup // nil: no user cgroup
	services     *serviceManager
	shells       *shellManager
	jobs         *jobManager
	identity     identityState // set once after a restore (identity_linux.go)
	handler      http.Handler
	layers       *layers
	quiet        *quiet
	// static is the part of health that never changes while the agent
	// lives (a restored guest has its saved guest's memory, vCPUs and
	// kernel): read once, not in every restored guest's first call.
	static agentapi.Health
	// kept are the files an identity refresh writes, open since before
	// the snapshot (nil: opened by path; identity_kept.go).
	kept *keptFiles
	// applyFake, set by tests, stands in for applyIdentity (which sets
	// the clock, hostname and RNG of the machine it runs on).
	applyFake func(agentapi.IdentityRequest, *steps) (agentapi.IdentityResponse, error)
}

// New builds an agent from opts.
func New(opts Options) *Agent {
	a := &Agent{opts: opts, log: opts.Logger, env: opts.Env, workspaceDir: opts.WorkspaceDir}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.env == nil {
		a.env = DefaultEnv()
	}
	if a.workspaceDir == "" {
		a.workspaceDir = WorkspaceDir
	}
	if a.opts.SecretsDir == "" {
		a.opts.SecretsDir = agentapi.SecretsDir
	}
	a.layers = &layers{lower: opts.LayerLowerDir, upperMount: opts.LayerUpperMount, upperDisk: WorkspaceDisk}
	if a.layers.lower == "" {
		a.layers.lower = LayerLowerDir
	}
	if a.layers.upperMount == "" {
		a.layers.upperMount = LayerUpperMount
	}
	a.secrets = &secretStore{}
	a.quiet = newQuiet()
	a.user = newUserCgroup(opts.UserCgroup)
	a.user.makeSpare()
	a.services = &serviceManager{a: a, svcs: map[string]*service{}}
	a.shells = &shellManager{a: a, shells: map[string]*shell{}}
	a.jobs = &jobManager{a: a, jobs: map[string]*job{}}
	a.handler = a.routes()
	// FirstInherited: serveFirst answers a fork's Inherited (first.go).
	a.static = agentapi.Health{AgentVersion: opts.Version, VCPUs: runtime.NumCPU(), MemTotalKiB: memTotalKiB(), FirstInherited: true}
	if a.static.AgentVersion == "" {
		a.static.AgentVersion = buildVersion()
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		a.static.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	return a
}

// Serve runs a yamux server session over conn and serves the agent HTTP
// API on its streams until conn fails, the peer goes away, or ctx ends. It
// closes conn before returning. The end of the peer's session is not an
// error. Calls may overlap (each connection is its own session).
func (s *Agent) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	conn, err := s.serveFirst(ctx, conn) // first.go
	if err != nil {
		_ = conn.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	// The guest never writes unprompted: a write while no host is connected
	// blocks on virtio-serial.
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = agentapi.StreamWindow
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("start yamux server: %w", err)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(_ net.Listener) context.Context { return ctx },
		// HTTP/1.1 only: the host speaks nothing else, and each Serve of
		// a server allowing HTTP/2 sets it up first (code a restored
		// guest's first call would run and, under TCG, translate).
		Protocols: new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	stop := context.AfterFunc(ctx, func() {
		_ = srv.Close()
		_ = sess.Close()
	})
	defer stop()
	err = srv.Serve(sess)
	_ = sess.Close()
	_ = conn.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, yamux.ErrSessionShutdown) {
		return nil
	}
	return fmt.Errorf("serve agent api: %w", err)
}

func (s *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.PathHealth, s.handleHealth)
	mux.HandleFunc("POST "+agentapi.PathExec, s.handleExec)
	mux.HandleFunc("POST "+agentapi.PathExecQuiet, s.handleExec)
	mux.HandleFunc("GET "+agentapi.PathQuiet, s.handleQuiet)
	mux.HandleFunc("POST "+agentapi.PathShutdown, s.handleShutdown)
	mux.HandleFunc("POST "+agentapi.PathSecrets, s.handleSetSecrets)
	mux.HandleFunc("POST "+agentapi.PathIdentity, s.handleIdentity)
	s.services.routes(mux)
	s.shells.routes(mux)
	s.jobs.routes(mux)
	mux.HandleFunc("POST "+agentapi.PathFilesPush, s.handleFilesPush)
	mux.HandleFunc("POST "+agentapi.PathFilesPushDisk, s.handleFilesPushDisk)
	mux.HandleFunc("GET "+agentapi.PathFilesPull, s.handleFilesPull)
	s.fileOpRoutes(mux)
	s.releaseRoutes(mux)
	mux.HandleFunc("GET "+agentapi.PathLayerChanges, s.handleLayerChanges)
	mux.HandleFunc("POST "+agentapi.PathLayerFreeze, s.handleLayerFreeze)
	mux.HandleFunc("POST "+agentapi.PathLayerThaw, s.handleLayerThaw)
	mux.HandleFunc("GET "+agentapi.PathLayerManifest, s.handleLayerManifest)
	return s.tracked(mux)
}

func (s *Agent) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.health())
}

// health is what /v1/health answers (and an identity refresh, which is a
// restored guest's first call).
func (s *Agent) health() agentapi.Health {
	h := s.static
	h.UptimeMS = uptimeMS()
	h.InitStartedMS, h.RootReadyMS, h.AgentStartedMS = s.opts.InitStartedMS, s.opts.RootReadyMS, s.opts.AgentStartedMS
	return h
}

func (s *Agent) handleShutdown(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Shutdown == nil {
		s.fail(w, errorf(errdefs.ErrFailedPrecondition, "this agent cannot power off its host"))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.ShutdownResponse{OK: true})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.log.Info("shutdown requested")
	// Give the reply a moment to leave before PID 1 kills us.
	time.AfterFunc(100*time.Millisecond, s.opts.Shutdown)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fail replies with err: its errdefs category gives the wire name and
// the HTTP status; secret values in the message are redacted.
func (s *Agent) fail(w http.ResponseWriter, err error) {
	agentapi.WriteErrorResponse(w, errdefs.HTTPStatus(err), s.errorResponse(err))
}

// errorResponse describes err for the wire, secret values redacted.
func (s *Agent) errorResponse(err error) agentapi.ErrorResponse {
	er := agentapi.NewErrorResponse(err)
	er.Error, er.Hint = s.secrets.redactString(er.Error), s.secrets.redactString(er.Hint)
	return er
}

// errorf is an error of an errdefs category (errdefs.ErrNotFound...).
func errorf(category error, format string, args ...any) error {
	return errdefs.New(category, "", format, args...)
}

// categorize wraps err with a message and, when category is not nil, that
// category; without one, err keeps whatever category it has.
func categorize(category, err error, format string, args ...any) error {
	if category == nil {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return errdefs.Wrap(category, err, "", format, args...)
}

// buildVersion is the module version plus VCS revision of this binary.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, st := range bi.Settings {
		if st.Key == "vcs.revision" && len(st.Value) >= 12 {
			v += "+" + st.Value[:12]
		}
	}
	return v
}

func memTotalKiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// uptimeMS is CLOCK_BOOTTIME in milliseconds: time since the kernel started.
func uptimeMS() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1e6
}
