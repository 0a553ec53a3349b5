package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// Shells are persistent PTY sessions in a workspace that live in the guest
// agent across any number of calls. Output is kept in a bounded buffer with
// absolute byte cursors: follow next_cursor and nothing is missed or read
// twice; a cursor behind the buffer's start is answered with the dropped
// range.

// ShellClose acknowledges a close.
type ShellClose struct {
	WorkspaceID string `json:"workspace_id"`
	ShellID     string `json:"shell_id"`
	Closed      bool   `json:"closed"`
}

// OpenShellOptions describe a shell (defaults: cwd /workspace, 120x30).
type OpenShellOptions struct {
	Cwd       string
	Cols      int
	Rows      int
	Env       map[string]string
	SecretEnv map[string]string
	// BufferBytes bounds the output kept for readers (default 1 MiB); a
	// reader that falls further behind is told which range was dropped.
	BufferBytes int
}

// ReadShellOptions select output (defaults: cursor 0, 65536 characters).
type ReadShellOptions struct {
	Cursor   int64
	MaxChars int
	// Plain renders the output as the screen would show it: escape
	// sequences stripped, carriage returns and backspaces applied
	// (shell_chat.go).
	Plain bool
	// WaitForIdleMS, when positive, keeps reading until the shell printed
	// nothing for this many milliseconds (at most MaxShellIdleMS; the
	// whole read at most MaxShellIdleWait).
	WaitForIdleMS int
}

// OpenShell opens a PTY shell (bash, else sh) in a workspace.
func (c *Client) OpenShell(ctx context.Context, workspaceID string, o *OpenShellOptions) (Shell, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	var opts OpenShellOptions // nil: the contract defaults
	if o != nil {
		opts = *o
	}
	if opts.Cwd == "" {
		opts.Cwd = WorkspaceDir
	}
	if opts.Cols == 0 {
		opts.Cols = DefaultShellCols
	}
	if opts.Rows == 0 {
		opts.Rows = DefaultShellRows
	}
	var out Shell
	err := c.withWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		info, err := a.OpenShell(ctx, agentapi.ShellOpenRequest{Cwd: opts.Cwd, Cols: opts.Cols, Rows: opts.Rows, Env: opts.Env, SecretEnv: opts.SecretEnv, BufferBytes: opts.BufferBytes})
		out = shellFrom(workspaceID, info)
		return err
	})
	return out, err
}

// ReadShell returns merged output from cursor on, and the next cursor.
func (c *Client) ReadShell(ctx context.Context, workspaceID, shellID string, o *ReadShellOptions) (ShellRead, error) {
	var opts ReadShellOptions // nil: the contract defaults
	if o != nil {
		opts = *o
	}
	if opts.MaxChars == 0 {
		opts.MaxChars = DefaultShellMaxChars
	}
	if err := checkShellRead(opts); err != nil {
		return ShellRead{}, err
	}
	workspaceID = c.canonicalID(workspaceID)
	var out ShellRead
	err := c.withRunningWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		var r agentapi.ShellReadResponse
		var err error
		if opts.WaitForIdleMS > 0 {
			r, err = readShellIdle(ctx, a, shellID, opts)
		} else {
			r, err = a.ReadShell(ctx, shellID, agentapi.ShellReadRequest{Cursor: opts.Cursor, MaxChars: opts.MaxChars})
		}
		out = plainRead(shellReadFrom(workspaceID, r), opts.Plain)
		return err
	})
	return out, err
}

// Bool returns a pointer to b, for optional fields of option structs.
func Bool(b bool) *bool { return &b }

// WriteShellOptions tune WriteShell. A nil *WriteShellOptions, or a nil
// field, takes the contract default.
type WriteShellOptions struct {
	// AppendNewline presses Enter after the input (default true:
	// DefaultAppendNewline).
	AppendNewline *bool
}

// WriteShell sends input to a shell, followed by a newline unless opts
// says otherwise.
func (c *Client) WriteShell(ctx context.Context, workspaceID, shellID, input string, opts *WriteShellOptions) (ShellWrite, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	appendNewline := DefaultAppendNewline
	if opts != nil && opts.AppendNewline != nil {
		appendNewline = *opts.AppendNewline
	}
	var out ShellWrite
	err := c.withRunningWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		r, err := a.WriteShell(ctx, shellID, input, appendNewline)
		out = ShellWrite{WorkspaceID: workspaceID, ShellID: r.ShellID, BytesWritten: r.BytesWritten}
		return err
	})
	return out, err
}

// SignalShell sends a signal (default "INT") to the shell's foreground
// process group.
func (c *Client) SignalShell(ctx context.Context, workspaceID, shellID, signal string) (ShellSignal, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	if signal == "" {
		signal = DefaultShellSignal
	}
	var out ShellSignal
	err := c.withRunningWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		r, err := a.SignalShell(ctx, shellID, signal)
		out = ShellSignal{WorkspaceID: workspaceID, ShellID: r.ShellID, Signal: r.Signal, PGID: r.PGID}
		return err
	})
	return out, err
}

// CloseShell ends a shell and its processes.
func (c *Client) CloseShell(ctx context.Context, workspaceID, shellID string) (ShellClose, error) {
	workspaceID = c.canonicalID(workspaceID) // results carry the id, not a name

	err := c.withRunningWorkspaceAgent(ctx, workspaceID, func(a *agentapi.Client) error {
		return a.CloseShell(ctx, shellID)
	})
	return ShellClose{WorkspaceID: workspaceID, ShellID: shellID, Closed: err == nil}, err
}

// withRunningWorkspaceAgent is withWorkspaceAgent without the restart: a
// shell lives in one boot of the guest, so after a crash its id is simply
// not found rather than silently reopened.
func (c *Client) withRunningWorkspaceAgent(ctx context.Context, id string, f func(*agentapi.Client) error) error {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return err
	}
	touchActivity(dir)
	agent, err := c.lc.Agent(ctx, dir, rec)
	if err != nil {
		return err
	}
	defer agent.Close()
	return f(agent)
}
