// Package supervisor runs one VM or workspace for as long as it lives.
//
// A supervisor is the hidden `pyro __supervise DIR` process, started
// detached (its own session) for each VM. It owns the VMM process (which
// dies with it: Pdeathsig), the one agent connection, the TTL timer and the
// event log, and serves HTTP+JSON on DIR/supervisor.sock:
//
//	GET  /v1/status    -> Status (any time, also while the guest boots);
//	                      ?wait=MS holds the answer while the guest is still
//	                      starting, up to MS milliseconds (at most maxStatusWait)
//	POST /v1/stop      -> Status; powers the guest off, then the supervisor exits
//	*    /agent/...    -> spliced to a new guest agent stream (agentproxy.go)
//	*    /v1/network... -> the guest network: policy, denials, published ports (network.go)
//
// Call order: spawn, ask /v1/status?wait=... until "running" (or the process
// exits: DIR/exit.json then says why), use /agent/..., /v1/stop. Stop is idempotent
// while the supervisor lives; afterwards the socket is gone and callers read
// the exit note. Any number of requests may run concurrently.
//
// A supervisor ends on purpose (stop, TTL expiry, boot failure, the VMM
// dying) after writing DIR/exit.json; if it is killed, there is no note and
// the observed status is broken.
package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Arg is os.Args[1] of a supervisor process.
const Arg = "__supervise"

// AgentPrefix is where the supervisor serves the proxied agent API.
const AgentPrefix = "/agent"

// Status is what GET /v1/status answers, and what Observe derives when no
// supervisor answers. Cause is the value to compare; Reason is for people.
type Status struct {
	State         string         `json:"state"`
	Cause         instance.Cause `json:"cause,omitempty"`
	Reason        string         `json:"reason,omitempty"`
	Backend       string         `json:"backend,omitempty"`
	Acceleration  string         `json:"acceleration,omitempty"`
	Isolation     string         `json:"isolation,omitempty"`
	AccelNote     string         `json:"accel_note,omitempty"`
	SupervisorPID int            `json:"supervisor_pid"`
	VMMPID        int            `json:"vmm_pid,omitempty"`
	BootMS        int64          `json:"boot_ms,omitempty"`
	// Start is "warm" (restored from a memory snapshot) or "cold".
	Start     string           `json:"start,omitempty"`
	StartedAt time.Time        `json:"started_at"`
	Health    *agentapi.Health `json:"health,omitempty"`
	// Pooled: a warm pool's workspace not claimed yet (pooled.go);
	// Paused: its guest waits paused.
	Pooled bool `json:"pooled,omitempty"`
	Paused bool `json:"paused,omitempty"`
	// Inherited is what a fork's guest still ran when it started (its
	// identity call's answer, vm.VM.Inherited); nil for other boots.
	Inherited *agentapi.Inherited `json:"inherited,omitempty"`
}

// HealthDeadline bounds the guest agent's answer to the health call made
// for every status request of a running guest; a guest that misses it is
// observed as unresponsive. Generous, because a TCG guest on a busy host
// answers slowly.
const HealthDeadline = 2 * time.Second

// Options adjust a supervisor; the zero value is what `pyro __supervise`
// runs. Tests swap boot steps (a fake backend) through it.
type Options struct {
	// Steps replaces vm.Boot's choice (a restore from a memory snapshot
	// when one fits, else a cold boot).
	Steps vm.Steps
	// HealthDeadline replaces HealthDeadline.
	HealthDeadline time.Duration
	// PoolLink is a pooled supervisor's link to its pool (pooled.go);
	// MainWith takes it from PoolLinkEnv.
	PoolLink io.ReadCloser
	// Pause replaces the backend's pause of a pooled guest, and Identity
	// the identity refresh of its claim (tests: the fake backend's agent
	// runs on the host, whose clock and hostname are not its to set).
	Pause    func(ctx context.Context, v *vm.VM) (PausedGuest, error)
	Identity func(ctx context.Context, v *vm.VM) error
	// statusHeld, for tests, is called when a status request starts
	// waiting for the boot's end.
	statusHeld func()
}

type server struct {
	dir    vmdir.Dir
	rec    instance.Record
	log    *slog.Logger
	opts   Options
	mu     sync.Mutex
	status Status
	vm     *vm.VM
	// stop is closed (once) with the reason in stopState/stopCause/stopReason.
	stopOnce   sync.Once
	stop       chan struct{}
	stopState  string
	stopCause  instance.Cause
	stopReason string
	// booted is closed (once) when the boot ended, either way: status
	// requests that wait for the end of "starting" wake on it.
	bootedOnce sync.Once
	booted     chan struct{}
	// pool is set for a pooled workspace (pooled.go).
	pool *poolState
	// tidy runs the layer housekeeping after checkpoints (tidy.go).
	tidy tidier
}

// bootEnded wakes the status requests waiting for the boot to end.
func (s *server) bootEnded() { s.bootedOnce.Do(func() { close(s.booted) }) }

// maxStatusWait bounds how long one status request waits for a boot to
// end; the caller asks again (its own deadline decides when to give up).
const maxStatusWait = 10 * time.Second

// Main is the supervisor process: it boots the VM recorded in dir and
// serves until the VM stops. It returns the process exit code.
func Main(dir string) int { return MainWith(dir, Options{}) }

// MainWith is Main with options (tests re-exec their own binary as a
// supervisor with a fake backend).
func MainWith(dir string, opts Options) int {
	if link := takePoolLink(); link != nil && opts.PoolLink == nil {
		opts.PoolLink = link
	}
	closeInherited()
	d := vmdir.Dir(dir)
	logFile, err := os.OpenFile(d.Path(vmdir.SupervisorLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pyro supervisor: %v\n", err)
		return 1
	}
	defer logFile.Close()
	// PYRO_LOG=debug (inherited from the CLI) logs boot steps and their
	// times here too.
	var lopts *slog.HandlerOptions
	if os.Getenv("PYRO_LOG") == "debug" {
		lopts = &slog.HandlerOptions{Level: slog.LevelDebug}
	}
	log := slog.New(slog.NewTextHandler(logFile, lopts)).With("vm_id", filepath.Base(dir))
	// A signal is a stop request like any other, with its own cause.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := Serve(d, log, opts, sigs); err != nil {
		log.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}

// listen opens the supervisor socket. A path too long for a unix socket
// address is reached relative to the VM directory instead (the process
// then runs with it as its working directory), so the length of the
// state root never matters.
func listen(d vmdir.Dir) (net.Listener, error) {
	p := d.Path(vmdir.SupervisorSock)
	if len(p) >= 100 {
		if err := os.Chdir(string(d)); err != nil {
			return nil, err
		}
		p = vmdir.SupervisorSock
	}
	_ = os.Remove(p)
	return net.Listen("unix", p)
}

// Serve boots the VM recorded in d and serves its API until the VM ends;
// a value on sigs is a stop request. It writes the exit note before it
// returns. It is Main without the process set-up, so tests run it in
// their own process.
func Serve(d vmdir.Dir, log *slog.Logger, opts Options, sigs <-chan os.Signal) error {
	if opts.HealthDeadline == 0 {
		opts.HealthDeadline = HealthDeadline
	}
	rec, err := instance.Load(d, "vm")
	if err != nil {
		return err
	}
	_ = os.Remove(d.Path(vmdir.Exit))
	// Listen before announcing the pid: a live pid with no socket reads as
	// a supervisor that stopped answering.
	ln, err := listen(d)
	if err != nil {
		_ = instance.WriteExit(d, instance.Broken, instance.CauseBootFailed, "supervisor cannot listen: "+err.Error())
		return err
	}
	if err := instance.WritePid(d); err != nil {
		ln.Close()
		return err
	}
	// Once Serve returns the exit note speaks for the instance, also when
	// Serve ran inside a process that lives on (tests).
	defer instance.RemovePid(d)
	s := &server{dir: d, rec: rec, log: log, opts: opts, stop: make(chan struct{}), booted: make(chan struct{}),
		status: Status{State: instance.Starting, SupervisorPID: os.Getpid(), StartedAt: time.Now().UTC()}}
	if rec.Kind == instance.KindPooled {
		s.startPooled(opts.PoolLink)
		// Runs before the socket and pid file go (defers run last in,
		// first out): an unclaimed pooled workspace leaves nothing.
		defer func() {
			if s.discarding() {
				_ = d.Remove()
			}
		}()
	}
	httpSrv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: headerTimeout}
	go func() { _ = httpSrv.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(ctx)
		_ = os.Remove(d.Path(vmdir.SupervisorSock))
	}()
	defer s.waitTidy(5 * time.Second)

	go func() {
		select {
		case sig := <-sigs:
			s.requestStop(instance.Stopped, instance.CauseSignal, "supervisor received "+sig.String())
		case <-s.stop:
		}
	}()
	if rec.ExpiresAt != nil {
		wait := time.Until(*rec.ExpiresAt)
		t := time.AfterFunc(wait, func() {
			s.requestStop(instance.Expired, instance.CauseTTL, "ttl of "+fmt.Sprint(rec.TTLSeconds)+" s passed")
		})
		defer t.Stop()
	}

	instance.AppendEvent(d, "starting", map[string]any{"environment": rec.Environment})
	root := filepath.Dir(filepath.Dir(string(d)))
	dirs := statedir.Dirs{Root: root}
	self, _ := os.Executable()
	bootCtx, cancelBoot := context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.stop:
			cancelBoot()
		case <-bootCtx.Done():
		}
	}()
	deps := vm.Deps{Dirs: dirs, Envs: envstore.New(dirs.Environments(), dirs.Cache()), Logger: log, AgentBinary: self}
	cfg := vm.Config{
		ID: rec.ID, Dir: d, Environment: rec.Environment, EnvironmentDigest: rec.EnvironmentDigest, VCPUs: rec.VCPUCount, MemMiB: rec.MemMiB,
		Network: rec.Network, AllowHostCompat: rec.AllowHostCompat, WorkspaceDisk: rec.WorkspaceDisk,
		NetworkPolicy: rec.Policy(),
		WorkspaceBase: rec.WorkspaceBase,
		AwaitBase:     awaitBase(d, rec.WorkspaceBase), // awaitbase.go
	}
	// A layered workspace gets a transfer disk for large pushes
	// (internal/workspace/transferdisk.go); without one, pushes stream.
	if rec.WorkspaceBase != "" && rec.WorkspaceDisk != "" {
		if p := d.Path(workspace.TransferFile); workspace.EnsureTransferDisk(p, workspace.DiskBytes()) == nil {
			cfg.TransferDisk = p
		}
	}
	// A new unseeded workspace's first boot may restore a guest with its
	// empty /workspace mounted (internal/vm/warm_mounted.go); the mark is
	// gone before any boot can write the disks.
	syncDisk := false
	if rec.WorkspaceBase != "" && rec.WorkspaceDisk != "" {
		cfg.FreshWorkspace, syncDisk = workspace.TakeFresh(string(d))
	}
	// A workspace whose upper layer became a chain of snapshots boots on
	// its live chain (internal/workspace/chain.go).
	var chainErr error
	if rec.WorkspaceDisk != "" {
		cfg.WorkspaceChain, chainErr = workspace.Layers{Dir: string(d), Disk: rec.WorkspaceDisk}.LiveChain()
	}
	var v *vm.VM
	forkBoot, isFork, ferr := forkSteps(d) // fork.go
	switch {
	case chainErr != nil:
		err = fmt.Errorf("workspace layers: %w", chainErr)
	case opts.Steps != nil:
		v, err = vm.BootWith(bootCtx, opts.Steps, deps, cfg)
	case ferr != nil:
		err = ferr
	case isFork:
		v, err = vm.BootWith(bootCtx, forkBoot, deps, cfg)
		if err == nil {
			_ = os.Remove(d.Path(ForkFile)) // later boots are ordinary ones
		}
	default:
		v, err = vm.Boot(bootCtx, deps, cfg)
	}
	cancelBoot()
	if syncDisk {
		// The create's unsynced copy, or the mounted snapshot's disk
		// that replaced it (synced already: this costs nothing then),
		// made durable before the create completes.
		if serr := workspace.SyncFile(rec.WorkspaceDisk); serr != nil && err == nil {
			_ = v.Close(context.Background())
			err = fmt.Errorf("sync the new workspace disk: %w", serr)
		}
	}
	if err != nil {
		state, cause, reason := instance.Broken, instance.CauseBootFailed, "boot failed: "+err.Error()
		select {
		case <-s.stop:
			state, cause, reason = s.stopState, s.stopCause, s.stopReason
		default:
		}
		s.finish(state, cause, reason)
		return nil
	}
	s.mu.Lock()
	s.vm = v
	h := v.Health
	s.status.State = instance.Running
	s.status.Backend, s.status.Acceleration, s.status.Isolation = v.Backend, v.Features.Acceleration, v.Features.Isolation
	s.status.AccelNote, s.status.VMMPID, s.status.BootMS, s.status.Health = v.AccelNote, v.Machine.Pid(), v.BootMS, &h
	s.status.Start, s.status.Inherited = v.Start, keptInherited(v.Inherited)
	s.mu.Unlock()
	s.bootEnded()
	instance.AppendEvent(d, "running", map[string]any{"backend": v.Backend, "acceleration": v.Features.Acceleration, "boot_ms": v.BootMS, "start": v.Start, "vmm_pid": v.Machine.Pid()})
	log.Info("running", "backend", v.Backend, "acceleration", v.Features.Acceleration, "boot_ms", v.BootMS)

	select {
	case <-v.Machine.Done():
		reason := "the VMM exited unexpectedly"
		if err := v.Machine.Err(); err != nil {
			reason += ": " + err.Error()
		}
		if s.discarding() { // an unclaimed pooled guest (pooled.go)
			reason = s.pooledDied(v, reason)
		}
		_ = v.Close(context.Background())
		s.finish(instance.Broken, instance.CauseVMMExited, reason)
	case <-s.stop:
		if s.discarding() {
			_ = v.Close(context.Background()) // paused: nothing to power off
		} else {
			s.powerOff(v)
		}
		s.finish(s.stopState, s.stopCause, s.stopReason)
	}
	return nil
}

// powerOff asks the guest to power off (so its disks are flushed), then
// stops the VMM, each step with a deadline.
func (s *server) powerOff(v *vm.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := v.Agent.Shutdown(ctx)
	cancel()
	if err != nil {
		// An agent that cannot even acknowledge will not power off: stop
		// the VMM now rather than wait for nothing.
		s.log.Warn("guest agent did not acknowledge the power-off; stopping the VMM", "err", err)
	} else {
		select {
		case <-v.Machine.Done():
		case <-time.After(5 * time.Second):
			s.log.Warn("guest did not power off in time; stopping the VMM")
		}
	}
	_ = v.Close(context.Background())
}

func (s *server) finish(state string, cause instance.Cause, reason string) {
	s.mu.Lock()
	s.status.State, s.status.Cause, s.status.Reason = state, cause, reason
	s.mu.Unlock()
	if err := instance.WriteExit(s.dir, state, cause, reason); err != nil {
		s.log.Error("write exit note", "err", err)
	}
	s.bootEnded() // after the note: a woken caller that finds no socket reads it
	instance.AppendEvent(s.dir, state, map[string]any{"reason": reason})
	s.log.Info("supervisor exiting", "state", state, "reason", reason)
}

func (s *server) requestStop(state string, cause instance.Cause, reason string) {
	s.stopOnce.Do(func() {
		s.stopState, s.stopCause, s.stopReason = state, cause, reason
		close(s.stop)
	})
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		// A caller waiting for a boot holds one request open instead of
		// polling: the answer comes the moment the boot ends.
		// The boot's last step was the guest agent's answer (its identity
		// or readiness call, with its health): a request woken by the
		// boot's end is answered with that observation, not a second
		// round trip (in a freshly restored TCG guest the first health
		// call costs ~100 ms of code translation). A request that finds
		// the boot long over observes anew.
		woken := false
		if ms, err := strconv.Atoi(r.URL.Query().Get("wait")); err == nil && ms > 0 {
			t := time.NewTimer(min(time.Duration(ms)*time.Millisecond, maxStatusWait))
			select {
			case <-s.booted:
			default:
				if s.opts.statusHeld != nil {
					s.opts.statusHeld()
				}
				select {
				case <-s.booted:
					woken = true
				case <-t.C:
				case <-r.Context().Done():
				}
			}
			t.Stop()
		}
		writeJSON(w, http.StatusOK, s.observe(r.Context(), woken))
	})
	mux.HandleFunc("POST /v1/stop", func(w http.ResponseWriter, _ *http.Request) {
		s.requestStop(instance.Stopped, instance.CauseRequested, "stopped on request")
		s.mu.Lock()
		st := s.status
		s.mu.Unlock()
		writeJSON(w, http.StatusAccepted, st)
	})
	mux.HandleFunc(AgentPrefix+"/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		v, state := s.vm, s.status.State
		s.mu.Unlock()
		if v == nil || state != instance.Running {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, "wait until it is running", "vm is %s", state))
			return
		}
		if s.paused() {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, "claim it first", "the pooled guest is paused"))
			return
		}
		spliceAgent(w, r, v.Agent)
	})
	s.networkRoutes(mux)
	s.forkRoutes(mux)
	s.poolRoutes(mux)
	s.tidyRoutes(mux)
	return mux
}

// observe is the status as seen now, not as remembered: a VMM that just
// died is reported even before the main loop has noticed and written the
// exit note, and a running guest must answer a health call in time, unless
// justBooted: the boot ended a moment ago with the agent's answer.
func (s *server) observe(ctx context.Context, justBooted bool) Status {
	s.mu.Lock()
	st, v := s.status, s.vm
	s.mu.Unlock()
	if v == nil || st.State != instance.Running || st.Paused {
		return st // a paused pooled guest answers nothing until its claim
	}
	select {
	case <-v.Machine.Done():
		st.State, st.Cause, st.Reason = instance.Broken, instance.CauseVMMExited, "the VMM exited unexpectedly"
		return st
	default:
	}
	if justBooted {
		return st
	}
	hctx, cancel := context.WithTimeout(ctx, s.opts.HealthDeadline)
	defer cancel()
	h, err := v.Agent.Health(hctx)
	if err != nil {
		select {
		case <-v.Machine.Done():
			st.State, st.Cause, st.Reason = instance.Broken, instance.CauseVMMExited, "the VMM exited unexpectedly"
		default:
			st.State, st.Cause = instance.Unresponsive, instance.CauseAgentSilent
			st.Reason = fmt.Sprintf("guest agent did not answer its health call within %s", s.opts.HealthDeadline)
			if hctx.Err() == nil {
				st.Reason = "guest agent health call failed: " + err.Error()
			}
		}
		return st
	}
	st.Health = &h
	return st
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers with the agent protocol's error body, so the proxied
// agent client maps it back to the same category.
func writeError(w http.ResponseWriter, err error) { agentapi.WriteError(w, err) }
