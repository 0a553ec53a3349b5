package agentapi

import (
	"context"
	"net/http"
	"time"
)

// Shell defaults the agent applies when a request leaves a field at 0.
const (
	DefaultShellCols     = 120
	DefaultShellRows     = 30
	DefaultShellMaxChars = 65536
	// DefaultShellBufferBytes bounds a shell's output buffer; a reader
	// whose cursor falls behind it is told which range was dropped.
	DefaultShellBufferBytes = 1 << 20
	// MaxShellBufferBytes is the largest BufferBytes accepted.
	MaxShellBufferBytes = 64 << 20
	// MaxShellReadWaitMS caps ShellReadRequest.WaitMS.
	MaxShellReadWaitMS = 30_000
)

// Shell states.
const (
	ShellRunning = "running"
	ShellExited  = "exited"
)

// ShellOpenRequest opens an interactive shell on a PTY: bash -i when the
// guest has /bin/bash, else sh -i, with TERM=xterm-256color.
type ShellOpenRequest struct {
	// Cwd must exist; empty means /workspace if it is a directory, else /.
	Cwd string `json:"cwd,omitempty"`
	// Cols and Rows size the terminal; 0 means DefaultShellCols/Rows.
	Cols int `json:"cols,omitempty"`
	Rows int `json:"rows,omitempty"`
	// Env is merged over the default environment, as for Exec.
	Env map[string]string `json:"env,omitempty"`
	// SecretEnv maps secret names to env var names for this shell only.
	SecretEnv map[string]string `json:"secret_env,omitempty"`
	// BufferBytes bounds the output kept for readers; 0 means
	// DefaultShellBufferBytes.
	BufferBytes int `json:"buffer_bytes,omitempty"`
}

// ShellInfo describes one shell.
type ShellInfo struct {
	ShellID string `json:"shell_id"`
	// PID is the shell process (a session leader on the PTY).
	PID   int    `json:"pid"`
	Cwd   string `json:"cwd"`
	Cols  int    `json:"cols"`
	Rows  int    `json:"rows"`
	State string `json:"state"`
	// ExitCode is set once the shell process has ended.
	ExitCode  *int      `json:"exit_code,omitempty"`
	Argv      []string  `json:"argv"`
	StartedAt time.Time `json:"started_at"`
	// EndCursor is the byte offset just past everything the PTY has
	// printed so far.
	EndCursor int64 `json:"end_cursor"`
}

// ShellList is the reply of GET /v1/shells, oldest first.
type ShellList struct {
	Shells []ShellInfo `json:"shells"`
}

// ShellReadRequest reads a shell's output from an absolute cursor. Cursors
// count bytes of PTY output since the shell opened (not characters).
type ShellReadRequest struct {
	Cursor int64 `json:"cursor"`
	// MaxChars bounds the characters (runes) returned; 0 means
	// DefaultShellMaxChars.
	MaxChars int `json:"max_chars,omitempty"`
	// WaitMS, when > 0, makes the read wait up to this long for output
	// past Cursor (or for the shell to exit) before answering.
	WaitMS int `json:"wait_ms,omitempty"`
}

// ByteRange is a half-open range [From, To) of output byte offsets.
type ByteRange struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// ShellReadResponse is output from Cursor to NextCursor. Output is valid
// UTF-8 text; a multi-byte character is never split (an incomplete one at
// the end waits for the next read). Bytes that are not UTF-8 come out as
// U+FFFD. A reader that always passes NextCursor back sees every byte
// exactly once, unless Dropped says the buffer no longer held some.
type ShellReadResponse struct {
	ShellID string `json:"shell_id"`
	Output  string `json:"output"`
	// Cursor is where Output starts: the requested cursor, or the buffer
	// start when the requested one was dropped.
	Cursor     int64 `json:"cursor"`
	NextCursor int64 `json:"next_cursor"`
	// Dropped is the range that was requested but is gone from the bounded
	// buffer.
	Dropped *ByteRange `json:"dropped,omitempty"`
	// More: output past NextCursor was already available (MaxChars hit).
	More     bool   `json:"more"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

// ShellWriteRequest types input into the shell.
type ShellWriteRequest struct {
	Input string `json:"input"`
	// AppendNewline adds a carriage return (the Enter key) after Input.
	AppendNewline bool `json:"append_newline"`
}

// ShellWriteResponse acknowledges a write.
type ShellWriteResponse struct {
	ShellID      string `json:"shell_id"`
	BytesWritten int    `json:"bytes_written"`
}

// ShellSignalRequest sends a signal to the shell's foreground process
// group: INT, TERM, KILL, HUP, QUIT, USR1, USR2, WINCH, CONT or STOP, with
// or without a SIG prefix, any case.
type ShellSignalRequest struct {
	Signal string `json:"signal"`
}

// ShellSignalResponse says which signal went to which process group.
type ShellSignalResponse struct {
	ShellID string `json:"shell_id"`
	Signal  string `json:"signal"`
	PGID    int    `json:"pgid"`
}

// ShellResizeRequest changes the terminal size (the foreground program
// gets SIGWINCH).
type ShellResizeRequest struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// ShellCloseResponse acknowledges a close.
type ShellCloseResponse struct {
	ShellID string `json:"shell_id"`
	Closed  bool   `json:"closed"`
}

// ShellReset is the reply of POST /v1/shells/reset.
type ShellReset struct {
	Closed int `json:"closed"`
}

// checkShellID refuses an id the agent never hands out.
func checkShellID(id string) error {
	return checkID("shell", id, "use a shell_id returned by shell_open")
}

func shellPath(id, suffix string) string { return itemPath(PathShells, id, suffix) }

// OpenShell starts a shell on a new PTY.
func (c *Client) OpenShell(ctx context.Context, req ShellOpenRequest) (ShellInfo, error) {
	var info ShellInfo
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, PathShells, req, &info)
	return info, handedOut("shell", info.ShellID, err)
}

// ReadShell returns output from req.Cursor. Unknown or closed ids are
// not_found; a cursor past the end is invalid_argument.
func (c *Client) ReadShell(ctx context.Context, id string, req ShellReadRequest) (ShellReadResponse, error) {
	var r ShellReadResponse
	if err := checkShellID(id); err != nil {
		return r, err
	}
	err := c.readOutput(ctx, PathShells, id, outputRead{cursor: req.Cursor, maxChars: req.MaxChars, waitMS: req.WaitMS, bufferBytes: MaxShellBufferBytes}, &r)
	return r, err
}

// WriteShell types input into the shell (plus Enter when appendNewline).
func (c *Client) WriteShell(ctx context.Context, id, input string, appendNewline bool) (ShellWriteResponse, error) {
	var r ShellWriteResponse
	if err := checkShellID(id); err != nil {
		return r, err
	}
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, shellPath(id, "/write"), ShellWriteRequest{Input: input, AppendNewline: appendNewline}, &r)
	return r, err
}

// SignalShell sends a signal to the shell's foreground process group.
func (c *Client) SignalShell(ctx context.Context, id, signal string) (ShellSignalResponse, error) {
	var r ShellSignalResponse
	if err := checkShellID(id); err != nil {
		return r, err
	}
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, shellPath(id, "/signal"), ShellSignalRequest{Signal: signal}, &r)
	return r, err
}

// ResizeShell changes the terminal size.
func (c *Client) ResizeShell(ctx context.Context, id string, cols, rows int) (ShellInfo, error) {
	var info ShellInfo
	if err := checkShellID(id); err != nil {
		return info, err
	}
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, shellPath(id, "/resize"), ShellResizeRequest{Cols: cols, Rows: rows}, &info)
	return info, err
}

// CloseShell kills every process of the shell's session and frees it.
// Afterwards the id is not_found.
func (c *Client) CloseShell(ctx context.Context, id string) error {
	var r ShellCloseResponse
	if err := checkShellID(id); err != nil {
		return err
	}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, shellPath(id, "/close"), nil, &r)
}

// ListShells returns the open shells (including ones whose process exited
// but that were not closed), oldest first.
func (c *Client) ListShells(ctx context.Context) ([]ShellInfo, error) {
	var l ShellList
	if err := c.jsonCall(ctx, callTimeout, http.MethodGet, PathShells, nil, &l); err != nil {
		return nil, err
	}
	return l.Shells, nil
}

// ResetShells closes every shell.
func (c *Client) ResetShells(ctx context.Context) (ShellReset, error) {
	var r ShellReset
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, PathShellsReset, nil, &r)
	return r, err
}
