package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/redact"
)

// pipeGrace is how long output is still read after the command exits, for
// background processes that keep its stdout/stderr open. After it the pipes
// are closed (those processes get SIGPIPE on their next write).
const pipeGrace = 250 * time.Millisecond

const maxRequestBytes = 8 << 20

func (s *Agent) handleExec(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "read exec request: %v", err))
		return
	}
	if len(body) > maxRequestBytes {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "exec request larger than %d bytes", maxRequestBytes))
		return
	}
	var req agentapi.ExecRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "decode exec request: %v", err))
		return
	}
	st := newSteps(req.Timings) // from here: the request is decoded
	ew := &eventWriter{w: w}
	rc := http.NewResponseController(w)
	ew.flush = rc.Flush
	err = s.execute(r.Context(), req, st, ew, func() func() bool {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		// Once the client is gone, unblock any write stuck on a full window.
		return context.AfterFunc(r.Context(), func() { _ = rc.SetWriteDeadline(time.Now()) })
	})
	if err != nil {
		s.fail(w, err)
	}
}

// execute runs a decoded exec request, writing its events to ew (POST
// PathExec, and a restored guest's first command: first.go). A request
// it refuses is its error, before anything was written; otherwise begin
// runs once before the command starts, and what it returns is called when
// the events are done. A ctx that ends kills the command, and the stream
// then ends without an exit event.
func (s *Agent) execute(ctx context.Context, req agentapi.ExecRequest, st *steps, ew *eventWriter, begin func() func() bool) error {
	var err error
	req.Env, err = s.secrets.withEnv(req.Env, req.SecretEnv)
	if err != nil {
		return err
	}
	if req.Cwd == "" {
		req.Cwd = s.opts.DefaultCwd
	}
	p, err := prepare(req, s.env)
	if err != nil {
		return errorf(errdefs.ErrInvalidArgument, "%v", err)
	}
	p.steps = st
	st.mark("prepare")
	red, _ := s.secrets.redactor()
	defer begin()()
	out := newRedactedOutput(red, ew.output)
	out.elide = ew.elided
	res, cg := s.run(ctx, p, out)
	// The leaf goes, and the next exec's is made, once the result is
	// sent: neither is on this command's path to its host.
	defer s.user.makeSpare()
	defer cg.release()
	out.flush()
	// Output crosses the channel once, in the events above: the host
	// assembles the result's stdout and stderr from them (run keeps no
	// copy, so res.Stdout and res.Stderr are empty).
	// Whatever the command wrote to /workspace reaches the disk before
	// the host learns it finished.
	s.syncWorkspace()
	st.mark("sync")
	res.Timings = st.String()
	s.log.Debug("exec done", "argv", red.Strings(p.argv), "exit_code", res.ExitCode, "duration_ms", res.DurationMS)
	if ctx.Err() != nil {
		// The request was abandoned (client gone, or the agent is shutting
		// down) and the command killed for it: that is no result, so the
		// stream ends without an exit event and the host reports the loss.
		return nil
	}
	ew.write(agentapi.Event{Type: agentapi.EventExit, Result: &res})
	return nil
}

// eventWriter writes NDJSON events and flushes after each. Safe for
// concurrent use.
type eventWriter struct {
	mu sync.Mutex
	w  io.Writer
	// flush, when set, pushes each event out (an HTTP response's).
	flush  func() error
	failed bool
}

func (e *eventWriter) write(ev agentapi.Event) {
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	b = append(b, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failed {
		return
	}
	if _, err := e.w.Write(b); err != nil {
		e.failed = true
		return
	}
	if e.flush == nil {
		return
	}
	if err := e.flush(); err != nil {
		e.failed = true
	}
}

// output sends p in events of at most MaxEventDataBytes, the host's bound.
func (e *eventWriter) output(stream string, p []byte) {
	for len(p) > 0 {
		n := min(len(p), agentapi.MaxEventDataBytes)
		e.write(agentapi.Event{Type: stream, Data: p[:n]})
		p = p[n:]
	}
}

// elided sends the elided event of stream (its tail follows).
func (e *eventWriter) elided(stream string, n int64) {
	e.write(agentapi.Event{Type: agentapi.EventElided, Stream: stream, Elided: n})
}

// redactedOutput redacts each output stream of one exec through its own
// redact.Stream, so a secret split across chunks is still caught. Its
// forward is called with run's forwarding lock held (one call at a time).
type redactedOutput struct {
	red     *redact.Redactor
	next    func(stream string, p []byte)
	elide   func(stream string, n int64)
	streams map[string]*redact.Stream
}

func newRedactedOutput(red *redact.Redactor, next func(stream string, p []byte)) *redactedOutput {
	return &redactedOutput{red: red, next: next, streams: map[string]*redact.Stream{}}
}

func (o *redactedOutput) forward(stream string, p []byte) {
	if o.red.Empty() {
		o.next(stream, p)
		return
	}
	st := o.streams[stream]
	if st == nil {
		st = o.red.Stream()
		o.streams[stream] = st
	}
	if out := st.Write(p); len(out) > 0 {
		o.next(stream, out)
	}
}

// elided ends a stream's head: what the redactor held back goes first,
// then the elided event; the tail is redacted afresh (a secret cut by the
// elision is not whole in either part).
func (o *redactedOutput) elided(stream string, n int64) {
	if st := o.streams[stream]; st != nil {
		if out := st.Flush(); len(out) > 0 {
			o.next(stream, out)
		}
		delete(o.streams, stream)
	}
	if o.elide != nil {
		o.elide(stream, n)
	}
}

// flush emits the held-back tails once the command is done.
func (o *redactedOutput) flush() {
	for _, stream := range []string{agentapi.EventStdout, agentapi.EventStderr} {
		if st := o.streams[stream]; st != nil {
			if out := st.Flush(); len(out) > 0 {
				o.next(stream, out)
			}
		}
	}
}

// prepared is a validated exec request.
type prepared struct {
	argv      []string
	env       []string
	path      string // PATH of the merged env, for the lookup
	cwd       string
	timeout   time.Duration
	maxOutput int64
	steps     *steps // nil: not timed
}

// prepare validates req; base is the environment the command starts from,
// req.Env overrides it.
func prepare(req agentapi.ExecRequest, base map[string]string) (*prepared, error) {
	p := &prepared{cwd: req.Cwd, maxOutput: req.MaxOutputBytes}
	switch {
	case len(req.Argv) > 0 && req.Shell != "":
		return nil, errors.New("set argv or shell, not both")
	case len(req.Argv) > 0:
		if req.Argv[0] == "" {
			return nil, errors.New("argv[0] is empty")
		}
		p.argv = req.Argv
	case req.Shell != "":
		p.argv = []string{"/bin/sh", "-c", req.Shell}
	default:
		return nil, errors.New("no command: set argv or shell")
	}
	for _, a := range p.argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errors.New("command contains a NUL byte")
		}
	}
	if req.TimeoutMS < 0 {
		return nil, fmt.Errorf("timeout_ms %d is negative", req.TimeoutMS)
	}
	p.timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	if p.maxOutput < 0 {
		return nil, fmt.Errorf("max_output_bytes %d is negative", p.maxOutput)
	}
	if p.maxOutput == 0 {
		p.maxOutput = agentapi.DefaultMaxOutputBytes
	}
	if p.cwd == "" {
		p.cwd = "/"
	}
	if !filepath.IsAbs(p.cwd) {
		return nil, fmt.Errorf("cwd %q is not an absolute path", p.cwd)
	}
	if st, err := os.Stat(p.cwd); err != nil {
		return nil, fmt.Errorf("cwd %q: %w", p.cwd, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("cwd %q is not a directory", p.cwd)
	}
	env := make(map[string]string, len(base)+len(req.Env))
	for k, v := range base {
		env[k] = v
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("invalid environment variable name %q", k)
		}
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p.env = append(p.env, k+"="+env[k])
	}
	p.path = env["PATH"]
	return p, nil
}

// lookPath finds name in pathEnv like a shell would. A name with a slash is
// taken as is (relative to cwd).
func lookPath(name, pathEnv, cwd string) (string, error) {
	if strings.Contains(name, "/") {
		full := name
		if !filepath.IsAbs(full) {
			full = filepath.Join(cwd, name)
		}
		return full, checkExecutable(full)
	}
	var firstErr error
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		full := filepath.Join(dir, name)
		err := checkExecutable(full)
		if err == nil {
			return full, nil
		}
		if firstErr == nil && !errors.Is(err, fs.ErrNotExist) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", firstErr
	}
	return "", fs.ErrNotExist
}

func checkExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s: is a directory: %w", path, fs.ErrPermission)
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: %w", path, fs.ErrPermission)
	}
	return nil
}

// capture keeps the head and tail of one output stream
// (agentapi.HeadTail). The first limit bytes are forwarded as they come
// (they reach the host once, as events); past that the stream only feeds
// the tail ring, which finish sends after an elided event, so the host
// sees how the command started and how it ended.
type capture struct {
	stream  string
	limit   int64
	n       int64 // bytes forwarded live
	ht      *agentapi.HeadTail
	forward func(stream string, p []byte)
}

func newCapture(stream string, limit int64, forward func(string, []byte)) *capture {
	return &capture{stream: stream, limit: limit, ht: agentapi.NewHeadTail(limit), forward: forward}
}

// add keeps p and forwards what is still within the live budget.
func (c *capture) add(p []byte) {
	c.ht.Add(p)
	live := p[:min(int64(len(p)), max(c.limit-c.n, 0))]
	if len(live) == 0 {
		return
	}
	c.n += int64(len(live))
	c.forward(c.stream, live)
}

// pastLive reports whether the live budget is spent.
func (c *capture) pastLive() bool { return c.n >= c.limit }

// truncated reports whether bytes were elided.
func (c *capture) truncated() bool { return c.ht.Elided() > 0 }

// finish sends the elided event and the tail when bytes were elided
// (otherwise everything went out live).
func (c *capture) finish(elide func(stream string, n int64)) {
	if !c.truncated() {
		return
	}
	elide(c.stream, c.ht.Elided())
	c.forward(c.stream, c.ht.Tail())
}

const (
	// outputPipeBytes is the size asked for each output pipe (the
	// default is 64 KiB; fs.pipe-max-size is 1 MiB): a producer keeps
	// writing while the agent sends the previous chunk to the host, or
	// while the drainer below pauses.
	outputPipeBytes = 1 << 20
	// drainReadBytes is the read size of an output pipe.
	drainReadBytes = 256 << 10
	// dropPause is how long the drainer waits after a short read once the
	// stream is past its cap, so that the producer fills the large pipe
	// and each read takes up to drainReadBytes. Reading at once woke the
	// agent for every write of the producer (8 KiB for head or cat), and
	// under the user cgroup's low cpu.weight the agent's thread preempts
	// the producer on each wakeup: a 64 MiB flood cost ~8k context
	// switches per stream, slow under TCG.
	dropPause = 2 * time.Millisecond
	// dropPollMS bounds one wait for data of a quiet stream past its cap,
	// so a stop is seen.
	dropPollMS = 50
)

// drainBufs holds the drainers' read buffers: every exec runs two
// drainers, and a fresh drainReadBytes buffer each was 512 KiB of garbage
// per command, however little it printed.
var drainBufs = sync.Pool{New: func() any { b := make([]byte, drainReadBytes); return &b }}

// drain reads r into c until EOF or stop. Once c is past its cap the rest
// is read and dropped (the command must not block or die of SIGPIPE) off
// the Go poller: a pipe registered with epoll wakes its reader for every
// write, and the reader here should sleep through most of them.
func drain(r *os.File, c *capture, stop *atomic.Bool) {
	bp := drainBufs.Get().(*[]byte)
	defer drainBufs.Put(bp)
	buf := *bp
	for !c.pastLive() {
		n, err := r.Read(buf)
		if n > 0 {
			c.add(buf[:n])
		}
		if err != nil {
			return
		}
	}
	fd := -1
	if rc, err := r.SyscallConn(); err == nil {
		_ = rc.Control(func(f uintptr) {
			fd, _ = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
		})
	}
	if fd < 0 {
		// Stay on the poller, pausing all the same.
		for {
			n, err := r.Read(buf)
			if n > 0 {
				c.ht.Add(buf[:n])
			}
			if err != nil {
				return
			}
			if n < len(buf) {
				time.Sleep(dropPause)
			}
		}
	}
	defer unix.Close(fd)
	// Closing r takes the pipe out of the poller's epoll set (the copy
	// shares its non-blocking open file); run's later deadline and Close
	// on r are then no-ops.
	_ = r.Close()
	for !stop.Load() {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			c.ht.Add(buf[:n]) // the tail ring: a copy, no wakeup of the host
		}
		switch {
		case n == len(buf) || err == unix.EINTR:
		case n > 0:
			time.Sleep(dropPause)
		case err == unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, _ := unix.Poll(pfd, dropPollMS); k > 0 && pfd[0].Revents&unix.POLLIN != 0 && pfd[0].Revents&unix.POLLHUP == 0 {
				time.Sleep(dropPause)
			}
		default: // EOF or an error
			return
		}
	}
}

// growPipe asks for a larger pipe buffer; the default size still works.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, outputPipeBytes)
		})
	}
}

// run starts p, streams its output through forward and returns its result.
// It never fails: problems starting the command become exit codes 126/127
// with the reason on stderr. The command runs in a cgroup leaf of its own
// (returned, nil when it never started), which the caller releases; a
// timeout or cancel kills the whole leaf, and processes it leaves behind
// otherwise may keep running (background jobs) as a leftover.
func (s *Agent) run(ctx context.Context, p *prepared, out *redactedOutput) (agentapi.ExecResult, *leaf) {
	forward := out.forward
	start := time.Now()
	res := agentapi.ExecResult{StartedAt: start.UTC()}
	finish := func() agentapi.ExecResult {
		end := time.Now()
		res.FinishedAt = end.UTC()
		res.DurationMS = end.Sub(start).Milliseconds()
		return res
	}
	var fwdMu sync.Mutex
	safeForward := func(stream string, b []byte) {
		fwdMu.Lock()
		defer fwdMu.Unlock()
		forward(stream, b)
	}
	stdout := newCapture(agentapi.EventStdout, p.maxOutput, safeForward)
	stderr := newCapture(agentapi.EventStderr, p.maxOutput, safeForward)
	st := p.steps
	st.mark("headers")

	path, err := lookPath(p.argv[0], p.path, p.cwd)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			res.ExitCode = agentapi.ExitNotFound
			stderr.add([]byte("pyro: " + p.argv[0] + ": command not found\n"))
		} else {
			res.ExitCode = agentapi.ExitCannotExecute
			stderr.add([]byte("pyro: " + p.argv[0] + ": cannot execute: " + err.Error() + "\n"))
		}
		return finish(), nil
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		return startFailed(&res, stderr, p, err, finish), nil
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return startFailed(&res, stderr, p, err, finish), nil
	}
	growPipe(outR)
	growPipe(errR)
	st.mark("lookpath+pipes")
	cmd := &exec.Cmd{
		Path:        path,
		Args:        p.argv,
		Env:         p.env,
		Dir:         p.cwd,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	cmd, cg, err := s.startUser(cmd, "exec")
	st.mark("start")
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return startFailed(&res, stderr, p, err, finish), nil
	}
	pid := cmd.Process.Pid
	res.PID = pid

	var wg sync.WaitGroup
	wg.Add(2)
	var stopDrain atomic.Bool
	go func() { defer wg.Done(); drain(outR, stdout, &stopDrain) }()
	go func() { defer wg.Done(); drain(errR, stderr, &stopDrain) }()

	var (
		killMu   sync.Mutex
		timedOut bool
	)
	killGroup := func(timeout bool) {
		killMu.Lock()
		defer killMu.Unlock()
		if timeout {
			timedOut = true
		}
		_ = unix.Kill(-pid, unix.SIGKILL)
		// Everything it started, in whatever process group or session.
		cg.kill()
	}
	var timer *time.Timer
	if p.timeout > 0 {
		timer = time.AfterFunc(p.timeout, func() { killGroup(true) })
	}
	stopCancel := context.AfterFunc(ctx, func() { killGroup(false) })

	waitErr := cmd.Wait()
	st.mark("wait")
	if timer != nil {
		timer.Stop()
	}
	stopCancel()
	killMu.Lock()
	killed := timedOut || ctx.Err() != nil
	killMu.Unlock()
	if killed {
		// Let the killed leaf empty, so release removes it.
		cg.waitEmpty(time.Second)
	}

	// Let the readers finish; background processes may hold the pipes.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(pipeGrace):
		stopDrain.Store(true)
		_ = outR.SetReadDeadline(time.Now())
		_ = errR.SetReadDeadline(time.Now())
		<-done
	}
	outR.Close()
	errR.Close()
	st.mark("drain")

	killMu.Lock()
	res.TimedOut = timedOut
	killMu.Unlock()
	res.ExitCode = 0
	if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		switch {
		case st.Signaled():
			res.ExitCode = 128 + int(st.Signal())
			res.Signal = unix.SignalName(st.Signal())
		default:
			res.ExitCode = st.ExitStatus()
		}
	} else if waitErr != nil {
		res.ExitCode = -1
	}
	if res.TimedOut {
		res.ExitCode = agentapi.ExitTimedOut
	}
	for _, c := range []*capture{stdout, stderr} {
		c.finish(func(stream string, n int64) {
			fwdMu.Lock()
			defer fwdMu.Unlock()
			out.elided(stream, n)
		})
	}
	res.StdoutTruncated, res.StderrTruncated = stdout.truncated(), stderr.truncated()
	return finish(), cg
}

func startFailed(res *agentapi.ExecResult, stderr *capture, p *prepared, err error, finish func() agentapi.ExecResult) agentapi.ExecResult {
	res.ExitCode = agentapi.ExitCannotExecute
	if errors.Is(err, fs.ErrNotExist) {
		res.ExitCode = agentapi.ExitNotFound
	}
	stderr.add([]byte("pyro: " + p.argv[0] + ": cannot execute: " + err.Error() + "\n"))
	return finish()
}
