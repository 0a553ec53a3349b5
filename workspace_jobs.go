package pyro

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Background jobs are commands that outlive the call that started them,
// for clients whose tool calls time out sooner than the command: start
// returns a job_id at once, ReadWorkspaceJob follows the merged output by
// cursor (like a shell) and WaitWorkspaceJob waits a bounded time for the
// exit code. Jobs live in the guest agent (at most MaxWorkspaceJobs, each
// keeping its last 1 MiB of output), so a reset clears them.

// MaxWorkspaceJobs bounds the jobs a workspace keeps until its next reset.
const MaxWorkspaceJobs = agentapi.MaxJobs

// MaxJobWaitSeconds bounds one WaitWorkspaceJob call.
const MaxJobWaitSeconds = agentapi.MaxJobWaitMS / 1000

// WorkspaceJob describes one background job.
type WorkspaceJob struct {
	WorkspaceID string    `json:"workspace_id,omitempty"`
	JobID       string    `json:"job_id"`
	Command     string    `json:"command"`
	State       string    `json:"state"` // "running" or "exited"
	ExitCode    *int      `json:"exit_code,omitempty"`
	TimedOut    bool      `json:"timed_out,omitempty"`
	StartedAt   time.Time `json:"started_at"`
}

// WorkspaceJobRead is output from Cursor to NextCursor; More says a
// further read has output now.
type WorkspaceJobRead struct {
	WorkspaceID string     `json:"workspace_id"`
	JobID       string     `json:"job_id"`
	Output      string     `json:"output"`
	Cursor      int64      `json:"cursor"`
	NextCursor  int64      `json:"next_cursor"`
	Dropped     *ByteRange `json:"dropped,omitempty"`
	More        bool       `json:"more"`
	State       string     `json:"state"`
	ExitCode    *int       `json:"exit_code,omitempty"`
}

func jobFrom(workspaceID string, in agentapi.JobInfo) WorkspaceJob {
	return WorkspaceJob{WorkspaceID: workspaceID, JobID: in.JobID, Command: in.Command, State: in.State, ExitCode: in.ExitCode, TimedOut: in.TimedOut, StartedAt: in.StartedAt}
}

// StartWorkspaceJob starts a command in the background and returns at
// once. TimeoutSeconds 0 means no timeout (the job runs until it exits or
// the workspace is reset); OnOutput is not used.
func (c *Client) StartWorkspaceJob(ctx context.Context, id string, opts ExecOptions) (WorkspaceJob, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return WorkspaceJob{}, err
	}
	id = rec.ID
	if opts.Cwd == "" {
		opts.Cwd = workspace.Root
	}
	req, err := opts.execRequest()
	if err != nil {
		return WorkspaceJob{}, err
	}
	if opts.TimeoutSeconds == 0 {
		req.TimeoutMS = 0
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceJob{}, err
	}
	defer agent.Close()
	if err := c.checkpoint(ctx, dir, rec, agent, "job "+commandLabel(opts.Command)); err != nil {
		return WorkspaceJob{}, err
	}
	info, err := agent.StartJob(ctx, req)
	if err != nil {
		// The command line is the caller's and may hold a secret value.
		return WorkspaceJob{}, instance.Redactor(dir).Error(err)
	}
	return jobFrom(id, info), nil
}

// ReadWorkspaceJob returns a job's output from cursor on, at most maxChars
// characters (0: 65536).
func (c *Client) ReadWorkspaceJob(ctx context.Context, workspaceID, jobID string, cursor int64, maxChars int) (WorkspaceJobRead, error) {
	workspaceID = c.canonicalID(workspaceID)
	if cursor < 0 || maxChars < 0 {
		return WorkspaceJobRead{}, errdefs.New(errdefs.ErrInvalidArgument, "use the next_cursor of the previous read", "cursor and max_chars must not be negative")
	}
	var out WorkspaceJobRead
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		r, err := a.ReadJob(ctx, jobID, cursor, maxChars)
		if err != nil {
			return err
		}
		out = WorkspaceJobRead{WorkspaceID: workspaceID, JobID: r.JobID, Output: r.Output, Cursor: r.Cursor, NextCursor: r.NextCursor, More: r.More, State: r.State, ExitCode: r.ExitCode}
		if r.Dropped != nil {
			out.Dropped = &ByteRange{From: r.Dropped.From, To: r.Dropped.To}
		}
		return nil
	})
	return out, err
}

// WaitWorkspaceJob waits up to timeoutSeconds (at most MaxJobWaitSeconds)
// for a job to exit and returns its state either way.
func (c *Client) WaitWorkspaceJob(ctx context.Context, workspaceID, jobID string, timeoutSeconds int) (WorkspaceJob, error) {
	workspaceID = c.canonicalID(workspaceID)
	if timeoutSeconds < 0 || timeoutSeconds > MaxJobWaitSeconds {
		return WorkspaceJob{}, errdefs.New(errdefs.ErrInvalidArgument, "wait again to wait longer", "timeout_seconds %d: must be 0-%d", timeoutSeconds, MaxJobWaitSeconds)
	}
	var out WorkspaceJob
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		info, err := a.WaitJob(ctx, jobID, time.Duration(timeoutSeconds)*time.Second)
		out = jobFrom(workspaceID, info)
		return err
	})
	return out, err
}

// workspaceJobs lists a running workspace's jobs for status. Errors count
// as none: status must not fail because the guest is busy.
func workspaceJobs(ctx context.Context, agent *agentapi.Client) []WorkspaceJob {
	list, err := agent.ListJobs(ctx)
	if err != nil {
		return []WorkspaceJob{}
	}
	return jobsFrom(list)
}

// jobsFrom is the agent's job list as a workspace reports it.
func jobsFrom(list []agentapi.JobInfo) []WorkspaceJob {
	out := make([]WorkspaceJob, 0, len(list))
	for _, in := range list {
		out = append(out, jobFrom("", in))
	}
	return out
}
