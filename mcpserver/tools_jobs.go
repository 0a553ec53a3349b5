package mcpserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro"
)

// jobsTools run commands longer than a client's tool-call deadline: start
// in the background, then read output by cursor and wait in bounded steps.
// A separate tool rather than a background flag on workspace_exec keeps the
// contract's workspace_exec (its input and ExecResult output) unchanged.
var jobsTools = []tool{
	def(tool{name: "workspace_exec_background", title: "Start a background job in a workspace", hints: destructive | openWorld,
		description: "Start a shell command in /workspace as a background job and return at once with its job_id; use it for commands that may outlast a tool call (builds, test suites, downloads). " +
			"No timeout unless timeout_seconds is given. Collect output with workspace_job_read and the exit code with workspace_job_wait; workspace_status lists jobs. " +
			fmt.Sprintf("A workspace keeps at most %d jobs (each its last 1 MiB of output) until it is reset; a reset ends and clears them.", pyro.MaxWorkspaceJobs)}, workspaceExecBackground),
	def(tool{name: "workspace_job_read", title: "Read background job output", hints: readOnly,
		defaults: map[string]any{"cursor": pyro.DefaultShellCursor, "max_chars": pyro.DefaultShellMaxChars},
		description: "Read a background job's merged stdout and stderr from cursor on. Pass the previous read's next_cursor as cursor to get only new output; more=true means more output is already waiting. " +
			"state is running or exited (then exit_code is set)."}, workspaceJobRead),
	def(tool{name: "workspace_job_wait", title: "Wait for a background job", hints: readOnly,
		defaults:    map[string]any{"timeout_seconds": 30},
		description: fmt.Sprintf("Wait up to timeout_seconds (capped at %d) for a background job to exit and return its state and exit_code; state running means it has not exited yet: wait again or read its output.", pyro.MaxJobWaitSeconds)}, workspaceJobWait),
}

type workspaceExecBackgroundIn struct {
	WorkspaceID    string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Command        string            `json:"command" jsonschema:"Shell command, run by /bin/sh -c in /workspace. Required."`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"Kill the job after this many seconds (default: no timeout)."`
	SecretEnv      map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets as environment variables for this job only: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

func workspaceExecBackground(ctx context.Context, cl *call, in workspaceExecBackgroundIn) (pyro.WorkspaceJob, string, error) {
	cmd, err := command(in.Command)
	if err != nil {
		return pyro.WorkspaceJob{}, "", err
	}
	j, err := cl.c.StartWorkspaceJob(ctx, in.WorkspaceID, pyro.ExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds, SecretEnv: in.SecretEnv})
	if err != nil {
		return j, "", err
	}
	return j, fmt.Sprintf("started job %s in workspace %s; read its output with workspace_job_read, its exit code with workspace_job_wait", j.JobID, j.WorkspaceID), nil
}

type workspaceJobReadIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	JobID       string `json:"job_id" jsonschema:"Job id returned by workspace_exec_background. Required."`
	Cursor      int64  `json:"cursor,omitempty" jsonschema:"Byte offset to read from: pass the previous read's next_cursor to get only new output; 0 is the start."`
	MaxChars    int    `json:"max_chars,omitempty" jsonschema:"Maximum characters to return; more is flagged by more=true."`
}

func workspaceJobRead(ctx context.Context, cl *call, in workspaceJobReadIn) (pyro.WorkspaceJobRead, string, error) {
	r, err := cl.c.ReadWorkspaceJob(ctx, in.WorkspaceID, in.JobID, in.Cursor, in.MaxChars)
	if err != nil {
		return r, "", err
	}
	return r, fmt.Sprintf("[cursor %d -> next_cursor %d, %s, more %v]\n%s", r.Cursor, r.NextCursor, jobState(r.State, r.ExitCode), r.More, r.Output), nil
}

type workspaceJobWaitIn struct {
	WorkspaceID    string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	JobID          string `json:"job_id" jsonschema:"Job id returned by workspace_exec_background. Required."`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"Wait at most this many seconds (capped at 60)."`
}

func workspaceJobWait(ctx context.Context, cl *call, in workspaceJobWaitIn) (pyro.WorkspaceJob, string, error) {
	j, err := cl.c.WaitWorkspaceJob(ctx, in.WorkspaceID, in.JobID, min(max(in.TimeoutSeconds, 0), pyro.MaxJobWaitSeconds))
	if err != nil {
		return j, "", err
	}
	return j, fmt.Sprintf("job %s: %s", j.JobID, jobState(j.State, j.ExitCode)), nil
}

func jobState(state string, code *int) string {
	if code != nil {
		return fmt.Sprintf("exited with exit_code %d", *code)
	}
	return state
}

// renderJobs is the jobs part of workspace_status's text.
func renderJobs(jobs []pyro.WorkspaceJob) string {
	if len(jobs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(", jobs")
	for _, j := range jobs {
		fmt.Fprintf(&b, " %s (%s)", j.JobID, jobState(j.State, j.ExitCode))
	}
	return b.String()
}
