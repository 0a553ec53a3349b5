// Package supervisor runs one VM or workspace for as long as it lives.
//
// A supervisor is the hidden `pyro __supervise DIR` process, started
// detached (its own session) for each VM. It owns the VMM process (which
// dies with it: Pdeathsig), the one agent connection, the TTL timer and the
// event log, and serves HTTP+JSON on DIR/supervisor.sock:
//
//	GET  /v1/status    -> Status (any time, also while the guest boots)
//	POST /v1/stop      -> Status; powers the guest off, then the supervisor exits
//	*    /agent/...    -> proxied to the guest agent (internal/agentapi paths)
//
// Call order: spawn, poll /v1/status until "running" (or the process exits:
// DIR/exit.json then says why), use /agent/..., /v1/stop. Stop is idempotent
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
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
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
)

// Arg is os.Args[1] of a supervisor process.
const Arg = "__supervise"

// AgentPrefix is where the supervisor serves the proxied agent API.
const AgentPrefix = "/agent"

// Status is what GET /v1/status answers.
type Status struct {
	State         string           `json:"state"`
	Reason        string           `json:"reason,omitempty"`
	Backend       string           `json:"backend,omitempty"`
	Acceleration  string           `json:"acceleration,omitempty"`
	Isolation     string           `json:"isolation,omitempty"`
	AccelNote     string           `json:"accel_note,omitempty"`
	SupervisorPID int              `json:"supervisor_pid"`
	VMMPID        int              `json:"vmm_pid,omitempty"`
	BootMS        int64            `json:"boot_ms,omitempty"`
	StartedAt     time.Time        `json:"started_at"`
	Health        *agentapi.Health `json:"health,omitempty"`
}

type server struct {
	dir    vmdir.Dir
	rec    instance.Record
	log    *slog.Logger
	mu     sync.Mutex
	status Status
	vm     *vm.VM
	proxy  *httputil.ReverseProxy
	// stop is closed (once) with the reason in stopState/stopReason.
	stopOnce   sync.Once
	stop       chan struct{}
	stopState  string
	stopReason string
}

// Main is the supervisor process: it boots the VM recorded in dir and
// serves until the VM stops. It returns the process exit code.
func Main(dir string) int {
	d := vmdir.Dir(dir)
	logFile, err := os.OpenFile(d.Path(vmdir.SupervisorLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pyro supervisor: %v\n", err)
		return 1
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, nil)).With("vm_id", filepath.Base(dir))
	if err := run(d, log); err != nil {
		log.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}

func run(d vmdir.Dir, log *slog.Logger) error {
	// Socket names are relative to the VM directory, so their absolute
	// length never matters.
	if err := os.Chdir(string(d)); err != nil {
		return err
	}
	rec, err := instance.Load(d, "vm")
	if err != nil {
		return err
	}
	_ = os.Remove(vmdir.Exit)
	// Listen before announcing the pid: a live pid with no socket reads as
	// a supervisor that stopped answering.
	_ = os.Remove(vmdir.SupervisorSock)
	ln, err := net.Listen("unix", vmdir.SupervisorSock)
	if err != nil {
		_ = instance.WriteExit(d, instance.Broken, "supervisor cannot listen: "+err.Error())
		return err
	}
	if err := instance.WritePid(d); err != nil {
		return err
	}
	s := &server{dir: d, rec: rec, log: log, stop: make(chan struct{}),
		status: Status{State: instance.Starting, SupervisorPID: os.Getpid(), StartedAt: time.Now().UTC()}}
	httpSrv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = httpSrv.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(ctx)
		_ = os.Remove(vmdir.SupervisorSock)
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		s.requestStop(instance.Stopped, "supervisor received "+sig.String())
	}()
	if rec.ExpiresAt != nil {
		wait := time.Until(*rec.ExpiresAt)
		t := time.AfterFunc(wait, func() { s.requestStop(instance.Expired, "ttl of "+fmt.Sprint(rec.TTLSeconds)+" s passed") })
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
	v, err := vm.Boot(bootCtx, vm.Deps{Dirs: dirs, Envs: envstore.New(dirs.Environments(), dirs.Cache()), Logger: log, AgentBinary: self}, vm.Config{
		ID: rec.ID, Dir: d, Environment: rec.Environment, VCPUs: rec.VCPUCount, MemMiB: rec.MemMiB,
		Network: rec.Network, AllowHostCompat: rec.AllowHostCompat, WorkspaceDisk: rec.WorkspaceDisk,
	})
	cancelBoot()
	if err != nil {
		state, reason := instance.Broken, "boot failed: "+err.Error()
		select {
		case <-s.stop:
			state, reason = s.stopState, s.stopReason
		default:
		}
		s.finish(state, reason)
		return nil
	}
	s.mu.Lock()
	s.vm = v
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "pyro-agent"
			r.Out.URL.Path = strings.TrimPrefix(r.In.URL.Path, AgentPrefix)
			r.Out.URL.RawPath = ""
		},
		Transport:     v.Agent.Transport(),
		FlushInterval: -1, // exec output streams
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, errdefs.Wrap(errdefs.ErrUnavailable, err, "check the VM with `pyro vm status`", "guest agent unreachable"))
		},
	}
	h := v.Health
	s.status.State = instance.Running
	s.status.Backend, s.status.Acceleration, s.status.Isolation = v.Backend, v.Features.Acceleration, v.Features.Isolation
	s.status.AccelNote, s.status.VMMPID, s.status.BootMS, s.status.Health = v.AccelNote, v.Machine.Pid(), v.BootMS, &h
	s.mu.Unlock()
	instance.AppendEvent(d, "running", map[string]any{"backend": v.Backend, "acceleration": v.Features.Acceleration, "boot_ms": v.BootMS, "vmm_pid": v.Machine.Pid()})
	log.Info("running", "backend", v.Backend, "acceleration", v.Features.Acceleration, "boot_ms", v.BootMS)

	select {
	case <-v.Machine.Done():
		reason := "the VMM exited unexpectedly"
		if err := v.Machine.Err(); err != nil {
			reason += ": " + err.Error()
		}
		_ = v.Close(context.Background())
		s.finish(instance.Broken, reason)
	case <-s.stop:
		s.powerOff(v)
		s.finish(s.stopState, s.stopReason)
	}
	return nil
}

// powerOff asks the guest to power off (so its disks are flushed), then
// stops the VMM, each step with a deadline.
func (s *server) powerOff(v *vm.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_ = v.Agent.Shutdown(ctx)
	cancel()
	select {
	case <-v.Machine.Done():
	case <-time.After(5 * time.Second):
		s.log.Warn("guest did not power off in time; stopping the VMM")
	}
	_ = v.Close(context.Background())
}

func (s *server) finish(state, reason string) {
	s.mu.Lock()
	s.status.State, s.status.Reason = state, reason
	s.mu.Unlock()
	if err := instance.WriteExit(s.dir, state, reason); err != nil {
		s.log.Error("write exit note", "err", err)
	}
	instance.AppendEvent(s.dir, state, map[string]any{"reason": reason})
	s.log.Info("supervisor exiting", "state", state, "reason", reason)
}

func (s *server) requestStop(state, reason string) {
	s.stopOnce.Do(func() {
		s.stopState, s.stopReason = state, reason
		close(s.stop)
	})
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		st, v := s.status, s.vm
		s.mu.Unlock()
		// Observed, not remembered: a VMM that just died is reported even
		// before the main loop has noticed and written the exit note.
		if v != nil && st.State == instance.Running {
			select {
			case <-v.Machine.Done():
				st.State, st.Reason = instance.Broken, "the VMM exited unexpectedly"
			default:
			}
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/stop", func(w http.ResponseWriter, _ *http.Request) {
		s.requestStop(instance.Stopped, "stopped on request")
		s.mu.Lock()
		st := s.status
		s.mu.Unlock()
		writeJSON(w, http.StatusAccepted, st)
	})
	mux.HandleFunc(AgentPrefix+"/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		p, state := s.proxy, s.status.State
		s.mu.Unlock()
		if p == nil || state != instance.Running {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, "wait until it is running", "vm is %s", state))
			return
		}
		p.ServeHTTP(w, r)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers with the agent protocol's error body, so the proxied
// agent client maps it back to the same category.
func writeError(w http.ResponseWriter, err error) { agentapi.WriteError(w, err) }
