package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/names"
)

// Services are long-running processes the agent supervises. They live in
// the agent process, across host connections (Serve calls).

const (
	// serviceFailGrace is the SIGTERM grace when the agent stops a service
	// that did not become ready (the caller is waiting).
	serviceFailGrace = time.Second
	// probeAttemptTimeout bounds one readiness probe attempt.
	probeAttemptTimeout = 5 * time.Second
	// minProbeInterval is the smallest pause between probe attempts.
	minProbeInterval = 10 * time.Millisecond
	// failLogLines is how many log lines a failed start reports.
	failLogLines = 20
)

// defaultWorkDir is the cwd of services and shells when the request leaves
// it empty: the workspace directory when it exists, else /.
func (s *Agent) defaultWorkDir() string {
	if st, err := os.Stat(s.workspaceDir); err == nil && st.IsDir() {
		return s.workspaceDir
	}
	return "/"
}

// decodeBody reads a bounded JSON request body into v. An empty body
// leaves v as is.
func decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		return errorf(errdefs.ErrInvalidArgument, "read request: %v", err)
	}
	if len(body) > maxRequestBytes {
		return errorf(errdefs.ErrInvalidArgument, "request larger than %d bytes", maxRequestBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errorf(errdefs.ErrInvalidArgument, "decode request: %v", err)
	}
	return nil
}

// serviceManager is an agent's service table.
type serviceManager struct {
	a    *Agent
	mu   sync.Mutex
	svcs map[string]*service
}

type service struct {
	secrets   *secretStore // redacts what status reports
	name      string
	argv      []string
	cwd       string
	env       []string
	readiness *agentapi.ServiceReadiness
	log       *outBuf
	startedAt time.Time
	cg        *leaf // the service's cgroup leaf; nil without a user cgroup

	// stopMu serializes stop attempts.
	stopMu sync.Mutex
	// done is closed once the process has been reaped.
	done chan struct{}

	mu        sync.Mutex
	pid       int
	state     string
	exitCode  *int
	signal    string
	readyAt   *time.Time
	stoppedAt *time.Time
	probeErr  string
	errMsg    string
	stopping  bool
	stopState string // state to take when the process ends after a stop
	groupGone bool   // the process group was seen empty: never signal it again
}

func (sv *service) status() agentapi.ServiceStatus {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	st := agentapi.ServiceStatus{
		Name:           sv.name,
		State:          sv.state,
		Argv:           sv.argv,
		Cwd:            sv.cwd,
		Readiness:      sv.readiness,
		PID:            sv.pid,
		Signal:         sv.signal,
		StartedAt:      sv.startedAt,
		LastProbeError: sv.probeErr,
		Error:          sv.errMsg,
	}
	if sv.exitCode != nil {
		c := *sv.exitCode
		st.ExitCode = &c
	}
	if red, _ := sv.secrets.redactor(); !red.Empty() {
		st.Argv = red.Strings(st.Argv)
		st.LastProbeError, st.Error = red.String(st.LastProbeError), red.String(st.Error)
	}
	if sv.readyAt != nil {
		t := *sv.readyAt
		st.ReadyAt = &t
	}
	if sv.stoppedAt != nil {
		t := *sv.stoppedAt
		st.StoppedAt = &t
	}
	return st
}

func (sv *service) active() bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	switch sv.state {
	case agentapi.ServiceStarting, agentapi.ServiceRunning:
		return true
	}
	return false
}

// routes registers the service endpoints.
func (m *serviceManager) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+agentapi.PathServices, m.handleStart)
	mux.HandleFunc("GET "+agentapi.PathServices, m.handleList)
	mux.HandleFunc("POST "+agentapi.PathServicesReset, m.handleReset)
	mux.HandleFunc("GET "+agentapi.PathServices+"/{name}", m.handleStatus)
	mux.HandleFunc("GET "+agentapi.PathServices+"/{name}/logs", m.handleLogs)
	mux.HandleFunc("POST "+agentapi.PathServices+"/{name}/stop", m.handleStop)
}

func (m *serviceManager) get(name string) (*service, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sv := m.svcs[name]
	if sv == nil {
		return nil, errorf(errdefs.ErrNotFound, "no service named %q", name)
	}
	return sv, nil
}

func (m *serviceManager) handleList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, agentapi.ServiceList{Services: m.list()})
}

// list is every service's status, by name.
func (m *serviceManager) list() []agentapi.ServiceStatus {
	m.mu.Lock()
	list := make([]*service, 0, len(m.svcs))
	for _, sv := range m.svcs {
		list = append(list, sv)
	}
	m.mu.Unlock()
	out := make([]agentapi.ServiceStatus, 0, len(list))
	for _, sv := range list {
		out = append(out, sv.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (m *serviceManager) handleStatus(w http.ResponseWriter, r *http.Request) {
	sv, err := m.get(r.PathValue("name"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sv.status())
}

func (m *serviceManager) handleLogs(w http.ResponseWriter, r *http.Request) {
	sv, err := m.get(r.PathValue("name"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	q := r.URL.Query()
	tail := agentapi.DefaultServiceLogTailLines
	if v := q.Get("tail_lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			m.a.fail(w, errorf(errdefs.ErrInvalidArgument, "tail_lines %q is not a non-negative integer", v))
			return
		}
		if n > 0 {
			tail = n
		}
	}
	all := false
	if v := q.Get("all"); v != "" {
		all, err = strconv.ParseBool(v)
		if err != nil {
			m.a.fail(w, errorf(errdefs.ErrInvalidArgument, "all %q is not a boolean", v))
			return
		}
	}
	if all {
		tail = 0
	}
	lines, truncated := logLines(sv.log, tail)
	writeJSON(w, http.StatusOK, agentapi.ServiceLogs{
		Name:      sv.name,
		Lines:     lines,
		Truncated: truncated,
		State:     sv.status().State,
	})
}

// logLines returns the last tail lines kept in b (all when tail is 0) and
// whether b has dropped early output.
func logLines(b *outBuf, tail int) ([]string, bool) {
	data, start, _, _ := b.snapshot(0)
	truncated := start > 0
	if truncated {
		// The first kept line is partial.
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		} else {
			data = nil
		}
	}
	text := strings.TrimSuffix(string(data), "\n")
	if text == "" {
		return []string{}, truncated
	}
	lines := strings.Split(text, "\n")
	if tail > 0 && len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	return lines, truncated
}

func (m *serviceManager) handleStop(w http.ResponseWriter, r *http.Request) {
	sv, err := m.get(r.PathValue("name"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	sv.stop(time.Duration(agentapi.ServiceStopGraceMS)*time.Millisecond, agentapi.ServiceStopped, "")
	writeJSON(w, http.StatusOK, sv.status())
}

func (m *serviceManager) handleReset(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	list := make([]*service, 0, len(m.svcs))
	for _, sv := range m.svcs {
		list = append(list, sv)
	}
	m.svcs = map[string]*service{}
	m.mu.Unlock()
	var res agentapi.ServiceReset
	res.Removed = len(list)
	var wg sync.WaitGroup
	for _, sv := range list {
		if sv.active() {
			res.Stopped++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sv.stop(time.Duration(agentapi.ServiceStopGraceMS)*time.Millisecond, agentapi.ServiceStopped, "")
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, res)
}

// startOptions is a validated start request.
type startOptions struct {
	name      string
	p         *prepared
	path      string
	readiness *agentapi.ServiceReadiness
	timeout   time.Duration
	interval  time.Duration
}

func (m *serviceManager) validateStart(req agentapi.ServiceStartRequest) (*startOptions, error) {
	if !names.IsIdentifier(req.Name) {
		return nil, errorf(errdefs.ErrInvalidArgument, "invalid service name %q: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", req.Name)
	}
	o := &startOptions{name: req.Name}
	if req.ReadyTimeoutMS < 0 || req.ReadyIntervalMS < 0 {
		return nil, errorf(errdefs.ErrInvalidArgument, "ready_timeout_ms and ready_interval_ms must not be negative")
	}
	o.timeout = time.Duration(req.ReadyTimeoutMS) * time.Millisecond
	if o.timeout == 0 {
		o.timeout = agentapi.DefaultServiceReadyTimeoutMS * time.Millisecond
	}
	o.interval = time.Duration(req.ReadyIntervalMS) * time.Millisecond
	if o.interval == 0 {
		o.interval = agentapi.DefaultServiceReadyIntervalMS * time.Millisecond
	}
	o.interval = max(o.interval, minProbeInterval)
	cwd := req.Cwd
	if cwd == "" {
		cwd = m.a.defaultWorkDir()
	}
	env, err := m.a.secrets.withEnv(req.Env, req.SecretEnv)
	if err != nil {
		return nil, err
	}
	p, err := prepare(agentapi.ExecRequest{Argv: req.Argv, Shell: req.Shell, Env: env, Cwd: cwd}, m.a.env)
	if err != nil {
		return nil, errorf(errdefs.ErrInvalidArgument, "service %q: %v", req.Name, err)
	}
	o.p = p
	if req.Readiness != nil {
		rd, err := validateReadiness(*req.Readiness)
		if err != nil {
			return nil, err
		}
		o.readiness = rd
	}
	path, err := lookPath(p.argv[0], p.path, p.cwd)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errorf(errdefs.ErrFailedPrecondition, "service %q: %s: command not found", req.Name, p.argv[0])
		}
		return nil, errorf(errdefs.ErrFailedPrecondition, "service %q: %s: cannot execute: %v", req.Name, p.argv[0], err)
	}
	o.path = path
	return o, nil
}

func validateReadiness(rd agentapi.ServiceReadiness) (*agentapi.ServiceReadiness, error) {
	switch rd.Type {
	case agentapi.ProbeFile:
		if rd.Path == "" {
			return nil, errorf(errdefs.ErrInvalidArgument, "file readiness probe needs a path")
		}
	case agentapi.ProbeTCP:
		if rd.Address == "" {
			return nil, errorf(errdefs.ErrInvalidArgument, "tcp readiness probe needs an address (host:port)")
		}
		addr := rd.Address
		if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
			addr = "127.0.0.1:" + addr
		} else if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, errorf(errdefs.ErrInvalidArgument, "tcp readiness probe address %q: %v", rd.Address, err)
		}
		rd.Address = addr
	case agentapi.ProbeHTTP:
		u, err := url.Parse(rd.URL)
		if rd.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errorf(errdefs.ErrInvalidArgument, "http readiness probe needs an http:// or https:// url, got %q", rd.URL)
		}
		if rd.ExpectStatus != 0 && (rd.ExpectStatus < 100 || rd.ExpectStatus > 599) {
			return nil, errorf(errdefs.ErrInvalidArgument, "http readiness probe expect_status %d is not an HTTP status", rd.ExpectStatus)
		}
	case agentapi.ProbeCommand:
		if strings.TrimSpace(rd.Command) == "" {
			return nil, errorf(errdefs.ErrInvalidArgument, "command readiness probe needs a command")
		}
		if strings.IndexByte(rd.Command, 0) >= 0 {
			return nil, errorf(errdefs.ErrInvalidArgument, "command readiness probe contains a NUL byte")
		}
	case "":
		return nil, errorf(errdefs.ErrInvalidArgument, "readiness probe needs a type: file, tcp, http or command")
	default:
		return nil, errorf(errdefs.ErrInvalidArgument, "unknown readiness probe type %q: use file, tcp, http or command", rd.Type)
	}
	return &rd, nil
}

func (m *serviceManager) handleStart(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ServiceStartRequest
	if err := decodeBody(r, &req); err != nil {
		m.a.fail(w, err)
		return
	}
	st, err := m.start(r.Context(), req)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (m *serviceManager) start(ctx context.Context, req agentapi.ServiceStartRequest) (agentapi.ServiceStatus, error) {
	o, err := m.validateStart(req)
	if err != nil {
		return agentapi.ServiceStatus{}, err
	}
	sv := &service{
		secrets:   m.a.secrets,
		name:      o.name,
		argv:      o.p.argv,
		cwd:       o.p.cwd,
		env:       o.p.env,
		readiness: o.readiness,
		log:       newOutBuf(agentapi.ServiceLogBytes),
		done:      make(chan struct{}),
		state:     agentapi.ServiceStarting,
	}
	// Reserve the name.
	m.mu.Lock()
	if old := m.svcs[o.name]; old != nil && old.active() {
		m.mu.Unlock()
		return agentapi.ServiceStatus{}, errorf(errdefs.ErrAlreadyExists, "service %q is already running (hint: stop it first or pick another name)", o.name)
	}
	m.svcs[o.name] = sv
	m.mu.Unlock()
	release := func() {
		m.mu.Lock()
		if m.svcs[o.name] == sv {
			delete(m.svcs, o.name)
		}
		m.mu.Unlock()
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		release()
		return agentapi.ServiceStatus{}, errorf(errdefs.ErrUnavailable, "service %q: create pipe: %v", o.name, err)
	}
	cmd := &exec.Cmd{
		Path:        o.path,
		Args:        o.p.argv,
		Env:         o.p.env,
		Dir:         o.p.cwd,
		Stdout:      pw,
		Stderr:      pw,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	sv.startedAt = time.Now().UTC()
	cmd, sv.cg, err = m.a.startUser(cmd, "service")
	pw.Close()
	if err != nil {
		pr.Close()
		release()
		return agentapi.ServiceStatus{}, errorf(errdefs.ErrFailedPrecondition, "service %q: start %s: %v", o.name, o.p.argv[0], err)
	}
	sv.mu.Lock()
	sv.pid = cmd.Process.Pid
	if o.readiness == nil {
		sv.state = agentapi.ServiceRunning
	}
	sv.mu.Unlock()
	go func() {
		// Secret values never reach the log, even split across writes.
		lr := &liveRedactor{st: sv.secrets, w: sv.log}
		_, _ = io.Copy(lr, pr)
		lr.Flush()
		pr.Close()
		sv.log.close()
	}()
	go sv.reap(cmd)

	if o.readiness == nil {
		return sv.status(), nil
	}
	return sv.waitReady(ctx, o, m.a)
}

// reap waits for the service's process and records how it ended.
func (sv *service) reap(cmd *exec.Cmd) {
	_ = cmd.Wait()
	now := time.Now().UTC()
	code, sig := -1, ""
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		if ws.Signaled() {
			code, sig = 128+int(ws.Signal()), unix.SignalName(ws.Signal())
		} else {
			code = ws.ExitStatus()
		}
	}
	sv.mu.Lock()
	sv.exitCode, sv.signal, sv.stoppedAt = &code, sig, &now
	switch {
	case sv.stopping:
		sv.state = sv.stopState
	case sv.state == agentapi.ServiceStarting:
		// waitReady reports it.
		sv.state = agentapi.ServiceFailed
	case code == 0:
		sv.state = agentapi.ServiceExited
	default:
		sv.state = agentapi.ServiceFailed
	}
	sv.mu.Unlock()
	close(sv.done)
}

// waitReady probes until the service is ready; on failure it stops the
// service and returns a failed_precondition error with the details.
func (sv *service) waitReady(ctx context.Context, o *startOptions, a *Agent) (agentapi.ServiceStatus, error) {
	deadline := time.Now().Add(o.timeout)
	probe := a.newProber(*o.readiness, o.p)
	var lastErr error
	fail := func(why string) (agentapi.ServiceStatus, error) {
		probeNote := ""
		if lastErr != nil {
			probeNote = "; last probe error: " + lastErr.Error()
		}
		msg := why + probeNote
		sv.stop(serviceFailGrace, agentapi.ServiceFailed, msg)
		sv.mu.Lock()
		if sv.errMsg == "" {
			sv.errMsg = msg
		}
		sv.mu.Unlock()
		// The group is gone, so the log pipe is closing: collect the rest.
		lctx, cancel := context.WithTimeout(context.Background(), time.Second)
		sv.log.waitClosed(lctx)
		cancel()
		lines, _ := logLines(sv.log, failLogLines)
		full := fmt.Sprintf("service %q %s", sv.name, msg)
		if len(lines) > 0 {
			full += fmt.Sprintf("; last %d log lines:\n%s", len(lines), strings.Join(lines, "\n"))
		} else {
			full += "; the service printed nothing"
		}
		return sv.status(), errorf(errdefs.ErrFailedPrecondition, "%s", full)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-sv.done:
			st := sv.status()
			if st.State == agentapi.ServiceStopped {
				return st, errorf(errdefs.ErrFailedPrecondition, "service %q was stopped before it became ready", sv.name)
			}
			code := -1
			if st.ExitCode != nil {
				code = *st.ExitCode
			}
			return fail(fmt.Sprintf("exited with code %d before it became ready", code))
		case <-ctx.Done():
			return fail("start request was cancelled before the service became ready")
		case <-timer.C:
		}
		if time.Now().After(deadline) {
			return fail(fmt.Sprintf("did not become ready within %s", o.timeout))
		}
		actx, cancel := context.WithDeadline(ctx, minTime(time.Now().Add(probeAttemptTimeout), deadline))
		err := probe(actx)
		cancel()
		if err == nil {
			now := time.Now().UTC()
			sv.mu.Lock()
			if sv.state == agentapi.ServiceStarting {
				sv.state = agentapi.ServiceRunning
				sv.readyAt = &now
				sv.probeErr = ""
				sv.mu.Unlock()
				return sv.status(), nil
			}
			sv.mu.Unlock()
			continue // it ended meanwhile: the done case reports it
		}
		lastErr = err
		sv.mu.Lock()
		sv.probeErr = err.Error()
		sv.mu.Unlock()
		wait := o.interval
		if rem := time.Until(deadline); rem < wait {
			wait = max(rem, 0)
		}
		timer.Reset(wait)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// newProber returns one attempt of the readiness probe. A command probe
// is user work: it runs in a cgroup leaf of its own.
func (a *Agent) newProber(rd agentapi.ServiceReadiness, p *prepared) func(ctx context.Context) error {
	switch rd.Type {
	case agentapi.ProbeFile:
		path := rd.Path
		if !filepath.IsAbs(path) {
			path = filepath.Join(p.cwd, path)
		}
		return func(context.Context) error {
			_, err := os.Stat(path)
			return err
		}
	case agentapi.ProbeTCP:
		return func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", rd.Address)
			if err != nil {
				return err
			}
			return c.Close()
		}
	case agentapi.ProbeHTTP:
		client := &http.Client{
			Transport: &http.Transport{
				Proxy:             nil,
				DisableKeepAlives: true,
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a local dev server's readiness
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		return func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, rd.URL, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if rd.ExpectStatus != 0 {
				if resp.StatusCode != rd.ExpectStatus {
					return fmt.Errorf("GET %s: status %d, want %d", rd.URL, resp.StatusCode, rd.ExpectStatus)
				}
				return nil
			}
			if resp.StatusCode < 200 || resp.StatusCode > 399 {
				return fmt.Errorf("GET %s: status %d, want 2xx or 3xx", rd.URL, resp.StatusCode)
			}
			return nil
		}
	case agentapi.ProbeCommand:
		return func(ctx context.Context) error {
			var out limitedBuffer
			out.limit = 2048
			cmd := exec.Command("/bin/sh", "-c", rd.Command)
			cmd.Env, cmd.Dir = p.env, p.cwd
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			// Background processes holding the output pipe do not hold
			// the probe.
			cmd.WaitDelay = time.Second
			cmd, cg, err := a.startUser(cmd, "probe")
			if err == nil {
				pid := cmd.Process.Pid
				stop := context.AfterFunc(ctx, func() {
					_ = unix.Kill(-pid, unix.SIGKILL)
					cg.kill()
				})
				err = cmd.Wait()
				stop()
				// Nothing of a probe outlives it.
				cg.remove()
			}
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				err = fmt.Errorf("timed out: %w", ctx.Err())
			}
			if s := strings.TrimSpace(out.String()); s != "" {
				return fmt.Errorf("command %q: %v: %s", rd.Command, err, s)
			}
			return fmt.Errorf("command %q: %v", rd.Command, err)
		}
	}
	return func(context.Context) error { return fmt.Errorf("unknown probe type %q", rd.Type) }
}

// limitedBuffer keeps the first limit bytes written to it.
type limitedBuffer struct {
	mu    sync.Mutex
	limit int
	buf   bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// stop ends the service's process group: SIGTERM, then SIGKILL after
// grace. It returns once the process is reaped and the group is empty (or
// a bounded wait after SIGKILL passed). state is what the service becomes
// if it was still running; errMsg, if set, is recorded as its error.
func (sv *service) stop(grace time.Duration, state, errMsg string) {
	sv.stopMu.Lock()
	defer sv.stopMu.Unlock()
	sv.mu.Lock()
	if sv.groupGone {
		sv.mu.Unlock()
		return
	}
	pgid := sv.pid
	running := false
	select {
	case <-sv.done:
	default:
		running = true
	}
	if running && !sv.stopping {
		sv.stopping, sv.stopState = true, state
		if errMsg != "" {
			sv.errMsg = errMsg
		}
	}
	sv.mu.Unlock()
	if pgid <= 0 {
		return
	}
	gone := func() bool {
		select {
		case <-sv.done:
		default:
			return false
		}
		return !groupAlive(pgid)
	}
	waitGone := func(d time.Duration) bool {
		end := time.Now().Add(d)
		for {
			if gone() {
				return true
			}
			if time.Now().After(end) {
				return false
			}
			select {
			case <-sv.done:
				time.Sleep(5 * time.Millisecond)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if !gone() {
		_ = unix.Kill(-pgid, unix.SIGTERM)
		_ = unix.Kill(-pgid, unix.SIGCONT)
		if !waitGone(grace) {
			_ = unix.Kill(-pgid, unix.SIGKILL)
			sv.cg.kill()
			waitGone(5 * time.Second)
		}
	}
	sv.mu.Lock()
	sv.groupGone = gone()
	sv.mu.Unlock()
	if sv.groupGone {
		// Whatever the service started outside its process group goes
		// with it.
		sv.cg.remove()
	}
}

// procInfo is what groupMembers needs from /proc/PID/stat.
type procInfo struct {
	pid, pgrp, sid int
	state          byte
}

// listProcs reads the state, process group and session of every process.
func listProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		// ") S ppid pgrp session ..."
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 4 || len(f[0]) != 1 {
			continue
		}
		pgrp, _ := strconv.Atoi(f[2])
		sid, _ := strconv.Atoi(f[3])
		out = append(out, procInfo{pid: pid, pgrp: pgrp, sid: sid, state: f[0][0]})
	}
	return out
}

// groupAlive reports whether a process group has a member that is not a
// zombie (zombies are dead; their reaping is their parent's business).
func groupAlive(pgid int) bool {
	if unix.Kill(-pgid, 0) == unix.ESRCH {
		return false
	}
	for _, p := range listProcs() {
		if p.pgrp == pgid && p.state != 'Z' && p.state != 'X' {
			return true
		}
	}
	return false
}
