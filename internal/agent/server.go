// Package agent is pyro's guest agent: the PID-1 init of a guest (Init), the
// agent server process it starts (RunChild), and the HTTP API both the guest
// and host-compat serve over a yamux session (Serve). The wire protocol is
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
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// ServeOptions configures Serve.
type ServeOptions struct {
	// Logger receives the agent's own diagnostics; nil discards them.
	Logger *slog.Logger
	// Shutdown is called (once per request, after the reply is sent) when
	// the host asks the guest to power off. Nil makes /v1/shutdown reply
	// with 501-like failed_precondition.
	Shutdown func()
	// Version is reported as agent_version; empty means the build info.
	Version string
	// Boot milestones reported by /v1/health (ms since kernel start).
	InitStartedMS, RootReadyMS, AgentStartedMS int64
	// SecretsDir is where /v1/secrets materialises secrets; empty means
	// agentapi.SecretsDir, which gets a tmpfs of its own. Another directory
	// (tests) is used as is.
	SecretsDir string
}

// Serve runs a yamux server session over conn and serves the agent HTTP API
// on its streams until conn fails, the peer goes away, or ctx ends. It
// closes conn before returning. The end of the peer's session is not an
// error.
func Serve(ctx context.Context, conn io.ReadWriteCloser, opts ServeOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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
	s := &server{opts: opts, log: log}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:       func(_ net.Listener) context.Context { return ctx },
	}
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

type server struct {
	opts     ServeOptions
	log      *slog.Logger
	services *serviceManager // shared by all sessions of the agent process
	shells   *shellManager   // shared by all sessions of the agent process
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.PathHealth, s.handleHealth)
	mux.HandleFunc("POST "+agentapi.PathExec, s.handleExec)
	mux.HandleFunc("POST "+agentapi.PathShutdown, s.handleShutdown)
	mux.HandleFunc("POST "+agentapi.PathSecrets, s.handleSetSecrets)
	s.serviceRoutes(mux)
	s.shellRoutes(mux)
	mux.HandleFunc("POST "+agentapi.PathFilesPush, s.handleFilesPush)
	mux.HandleFunc("GET "+agentapi.PathFilesPull, s.handleFilesPull)
	return mux
}

func (s *server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	h := agentapi.Health{
		AgentVersion:   s.opts.Version,
		VCPUs:          runtime.NumCPU(),
		MemTotalKiB:    memTotalKiB(),
		UptimeMS:       uptimeMS(),
		InitStartedMS:  s.opts.InitStartedMS,
		RootReadyMS:    s.opts.RootReadyMS,
		AgentStartedMS: s.opts.AgentStartedMS,
	}
	if h.AgentVersion == "" {
		h.AgentVersion = buildVersion()
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	writeJSON(w, http.StatusOK, h)
}

func (s *server) handleShutdown(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Shutdown == nil {
		writeError(w, http.StatusConflict, "failed_precondition", "this agent cannot power off its host")
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

// writeError replies with an error; secret values in the message are
// redacted.
func writeError(w http.ResponseWriter, code int, category, format string, args ...any) {
	writeJSON(w, code, agentapi.ErrorResponse{Error: redactString(fmt.Sprintf(format, args...)), Category: category})
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
