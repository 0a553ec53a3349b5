package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// A job is a one-shot command started by one call and collected by later
// ones: it runs exactly like an exec (s.run: user cgroup, per-stream
// capture limit, redaction of secret values) but its merged output goes to
// a bounded outBuf read by cursor, as a shell's does. Jobs are kept in
// memory only, so a reset (a new guest) clears them.
type job struct {
	id      string
	command string
	started time.Time
	out     *outBuf

	mu       sync.Mutex
	exitCode *int
	timedOut bool
}

type jobManager struct {
	a    *Agent
	mu   sync.Mutex
	jobs map[string]*job
}

func (m *jobManager) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+agentapi.PathJobs, m.handleStart)
	mux.HandleFunc("GET "+agentapi.PathJobs, m.handleList)
	mux.HandleFunc("GET "+agentapi.PathJobs+"/{id}/read", m.handleRead)
	mux.HandleFunc("GET "+agentapi.PathJobs+"/{id}/wait", m.handleWait)
}

func (j *job) info() agentapi.JobInfo {
	_, end, _ := j.out.bounds()
	in := agentapi.JobInfo{JobID: j.id, Command: j.command, State: agentapi.JobRunning, StartedAt: j.started.UTC(), EndCursor: end}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.exitCode != nil {
		c := *j.exitCode
		in.ExitCode, in.State, in.TimedOut = &c, agentapi.JobExited, j.timedOut
	}
	return in
}

func (m *jobManager) get(id string) (*job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[id]
	if j == nil {
		return nil, errorf(errdefs.ErrNotFound, "no job with id %q (the workspace was reset, or it never existed)", id)
	}
	return j, nil
}

func (m *jobManager) handleStart(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil || len(body) > maxRequestBytes {
		m.a.fail(w, errorf(errdefs.ErrInvalidArgument, "read job request: too large or unreadable"))
		return
	}
	var req agentapi.ExecRequest
	if err := json.Unmarshal(body, &req); err != nil {
		m.a.fail(w, errorf(errdefs.ErrInvalidArgument, "decode job request: %v", err))
		return
	}
	j, err := m.start(req)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, j.info())
}

// start validates req and runs it in the background.
func (m *jobManager) start(req agentapi.ExecRequest) (*job, error) {
	var err error
	req.Env, err = m.a.secrets.withEnv(req.Env, req.SecretEnv)
	if err != nil {
		return nil, err
	}
	if req.Cwd == "" {
		req.Cwd = m.a.opts.DefaultCwd
	}
	// Each stream's capture keeps head and tail within the job's buffer.
	if req.MaxOutputBytes == 0 {
		req.MaxOutputBytes = agentapi.JobBufferBytes
	}
	p, err := prepare(req, m.a.env)
	if err != nil {
		return nil, errorf(errdefs.ErrInvalidArgument, "%v", err)
	}
	red, _ := m.a.secrets.redactor()
	cmd := req.Shell
	if cmd == "" {
		b, _ := json.Marshal(req.Argv)
		cmd = string(b)
	}
	cmd = red.String(cmd)
	if r := []rune(cmd); len(r) > agentapi.MaxJobCommandChars {
		cmd = string(r[:agentapi.MaxJobCommandChars]) + "…"
	}
	j := &job{id: newShellID(), command: cmd, started: time.Now(), out: newOutBuf(agentapi.JobBufferBytes)}
	m.mu.Lock()
	if len(m.jobs) >= agentapi.MaxJobs {
		m.mu.Unlock()
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "reset the workspace to clear finished jobs", "workspace already has %d jobs", agentapi.MaxJobs)
	}
	m.jobs[j.id] = j
	m.mu.Unlock()

	go func() {
		out := newRedactedOutput(red, func(_ string, b []byte) { _, _ = j.out.Write(b) })
		out.elide = func(stream string, n int64) {
			fmt.Fprintf(j.out, "\n[... %d bytes of %s elided ...]\n", n, stream)
		}
		res, cg := m.a.run(context.Background(), p, out)
		cg.release()
		m.a.user.makeSpare()
		out.flush()
		m.a.syncWorkspace()
		code := res.ExitCode
		j.mu.Lock()
		j.exitCode, j.timedOut = &code, res.TimedOut
		j.mu.Unlock()
		j.out.close()
		m.a.log.Debug("job done", "job_id", j.id, "exit_code", code)
	}()
	return j, nil
}

func (m *jobManager) list() []agentapi.JobInfo {
	m.mu.Lock()
	list := make([]*job, 0, len(m.jobs))
	for _, j := range m.jobs {
		list = append(list, j)
	}
	m.mu.Unlock()
	out := make([]agentapi.JobInfo, 0, len(list))
	for _, j := range list {
		out = append(out, j.info())
	}
	sort.Slice(out, func(a, b int) bool {
		if !out[a].StartedAt.Equal(out[b].StartedAt) {
			return out[a].StartedAt.Before(out[b].StartedAt)
		}
		return out[a].JobID < out[b].JobID
	})
	return out
}

func (m *jobManager) handleList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, agentapi.JobList{Jobs: m.list()})
}

func (m *jobManager) handleRead(w http.ResponseWriter, r *http.Request) {
	j, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	cursor, maxChars, err := readWindow(r, j.out, "job", j.id)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	maxChars = min(maxChars, agentapi.JobBufferBytes)
	// The shell reader already handles cursors, dropped ranges and UTF-8.
	sh := &shell{id: j.id, out: j.out}
	rd := sh.readOutput(cursor, int(maxChars))
	in := j.info()
	writeJSON(w, http.StatusOK, agentapi.JobReadResponse{
		JobID: j.id, Output: rd.Output, Cursor: rd.Cursor, NextCursor: rd.NextCursor,
		Dropped: rd.Dropped, More: rd.More, State: in.State, ExitCode: in.ExitCode,
	})
}

func (m *jobManager) handleWait(w http.ResponseWriter, r *http.Request) {
	j, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	ms, err := queryInt(r, "timeout_ms", 0)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(min(ms, agentapi.MaxJobWaitMS))*time.Millisecond)
	j.out.waitClosed(ctx)
	cancel()
	writeJSON(w, http.StatusOK, j.info())
}
