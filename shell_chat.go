package pyro

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// Shell reads for chat: a model that types a command wants the screen's
// text once the program has finished printing, not raw escape sequences
// after an arbitrary sleep. ReadShellOptions.Plain renders the output like
// a terminal would (termtext.Plain) and WaitForIdleMS keeps reading until
// the shell has been quiet that long.

// Bounds of WaitForIdleMS: the quiet period is at most MaxShellIdleMS,
// and a read never waits longer than MaxShellIdleWait in total, however
// chatty the program.
const (
	MaxShellIdleMS   = 60_000
	MaxShellIdleWait = 120 * time.Second
)

// shellIdlePoll is how often a waiting read asks the guest for output.
const shellIdlePoll = 50 * time.Millisecond

// readShellIdle reads from opts.Cursor until no new output arrived for
// opts.WaitForIdleMS, the shell exited, MaxChars characters arrived, or
// MaxShellIdleWait passed. The pieces are joined into one read: Cursor is
// the first piece's, NextCursor the last one's.
func readShellIdle(ctx context.Context, a *agentapi.Client, shellID string, opts ReadShellOptions) (agentapi.ShellReadResponse, error) {
	idle := time.Duration(opts.WaitForIdleMS) * time.Millisecond
	deadline := time.Now().Add(MaxShellIdleWait)
	lastOutput := time.Now()
	var out agentapi.ShellReadResponse
	first := true
	cursor, chars := opts.Cursor, 0
	for {
		r, err := a.ReadShell(ctx, shellID, agentapi.ShellReadRequest{Cursor: cursor, MaxChars: opts.MaxChars - chars})
		if err != nil {
			return out, err
		}
		if first {
			out = r
			first = false
		} else {
			out.Output += r.Output
			out.NextCursor, out.More, out.State, out.ExitCode = r.NextCursor, r.More, r.State, r.ExitCode
		}
		if r.Output != "" || r.NextCursor != cursor {
			lastOutput = time.Now()
		}
		cursor = r.NextCursor
		chars += utf8.RuneCountInString(r.Output)
		now := time.Now()
		if chars >= opts.MaxChars || r.More || r.State != agentapi.ShellRunning || now.Sub(lastOutput) >= idle || !now.Before(deadline) {
			return out, nil
		}
		wait := min(shellIdlePoll, idle-now.Sub(lastOutput), deadline.Sub(now))
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// checkShellRead validates the chat options of a read.
func checkShellRead(opts ReadShellOptions) error {
	if opts.WaitForIdleMS < 0 || opts.WaitForIdleMS > MaxShellIdleMS {
		return errdefs.New(errdefs.ErrInvalidArgument, "use 1 to 60000 milliseconds, or 0 not to wait", "wait_for_idle_ms %d is out of range", opts.WaitForIdleMS)
	}
	return nil
}

// plainRead applies Plain to a read's output.
func plainRead(r ShellRead, plain bool) ShellRead {
	if plain {
		r.Output = termtext.Plain(r.Output)
	}
	return r
}
