package agentapi

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// Background jobs: one-shot commands that outlive the call that started
// them. The agent runs each like an exec (user cgroup, redaction) but keeps
// its merged stdout+stderr in a bounded buffer read by cursor, like a
// shell's. Jobs live in the agent's memory, so a reset (a new guest) clears
// them.
//
//	POST /v1/jobs              ExecRequest -> JobInfo (started)
//	GET  /v1/jobs              -> JobList
//	GET  /v1/jobs/ID/read      ?cursor=&max_chars= -> JobReadResponse
//	GET  /v1/jobs/ID/wait      ?timeout_ms= -> JobInfo
const PathJobs = "/v1/jobs"

const (
	// MaxJobs bounds the jobs an agent keeps (running and finished); a
	// start beyond it fails until the guest is reset.
	MaxJobs = 16
	// JobBufferBytes bounds the output kept per job; older output is
	// dropped and a reader behind it is told the dropped range.
	JobBufferBytes = 1 << 20
	// MaxJobWaitMS bounds one wait call.
	MaxJobWaitMS = 60_000
	// MaxJobCommandChars bounds the command text echoed in listings.
	MaxJobCommandChars = 256
)

// Job states.
const (
	JobRunning = "running"
	JobExited  = "exited"
)

// JobInfo describes one job.
type JobInfo struct {
	JobID   string `json:"job_id"`
	Command string `json:"command"`
	State   string `json:"state"`
	// ExitCode is set once the job has exited.
	ExitCode  *int      `json:"exit_code,omitempty"`
	TimedOut  bool      `json:"timed_out,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndCursor int64     `json:"end_cursor"`
}

// JobList is the reply of GET /v1/jobs.
type JobList struct {
	Jobs []JobInfo `json:"jobs"`
}

// JobReadResponse is output from Cursor to NextCursor.
type JobReadResponse struct {
	JobID      string     `json:"job_id"`
	Output     string     `json:"output"`
	Cursor     int64      `json:"cursor"`
	NextCursor int64      `json:"next_cursor"`
	Dropped    *ByteRange `json:"dropped,omitempty"`
	More       bool       `json:"more"`
	State      string     `json:"state"`
	ExitCode   *int       `json:"exit_code,omitempty"`
}

func checkJobID(id string) error {
	return checkID("job", id, "use a job_id returned by a background exec")
}

func jobPath(id, suffix string) string { return itemPath(PathJobs, id, suffix) }

// StartJob starts req in the background and returns at once.
func (c *Client) StartJob(ctx context.Context, req ExecRequest) (JobInfo, error) {
	var info JobInfo
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, PathJobs, req, &info)
	return info, handedOut("job", info.JobID, err)
}

// ReadJob returns output from cursor on (at most maxChars characters,
// 0 for the default).
func (c *Client) ReadJob(ctx context.Context, id string, cursor int64, maxChars int) (JobReadResponse, error) {
	var r JobReadResponse
	if err := checkJobID(id); err != nil {
		return r, err
	}
	err := c.readOutput(ctx, PathJobs, id, outputRead{cursor: cursor, maxChars: maxChars, bufferBytes: JobBufferBytes}, &r)
	return r, err
}

// WaitJob waits up to timeout (at most MaxJobWaitMS) for the job to exit
// and returns its state either way.
func (c *Client) WaitJob(ctx context.Context, id string, timeout time.Duration) (JobInfo, error) {
	var info JobInfo
	if err := checkJobID(id); err != nil {
		return info, err
	}
	ms := min(max(timeout.Milliseconds(), 0), MaxJobWaitMS)
	err := c.jsonCall(ctx, time.Duration(ms)*time.Millisecond+callTimeout, http.MethodGet, jobPath(id, "/wait?timeout_ms="+strconv.FormatInt(ms, 10)), nil, &info)
	return info, err
}

// ListJobs lists the agent's jobs, oldest first.
func (c *Client) ListJobs(ctx context.Context) ([]JobInfo, error) {
	var l JobList
	if err := c.jsonCall(ctx, callTimeout, http.MethodGet, PathJobs, nil, &l); err != nil {
		return nil, err
	}
	if len(l.Jobs) > MaxJobs {
		l.Jobs = l.Jobs[:MaxJobs]
	}
	return l.Jobs, nil
}
