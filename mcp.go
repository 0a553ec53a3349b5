package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// The MCP server exposes the SDK as the contract's tools. Every tool maps
// its arguments onto one SDK call; the behaviour lives in the SDK.
//
// Results: a guest command that fails is a normal result (exit_code,
// stderr). A tool that cannot do its job (unknown id, bad argument, no
// guest) returns a tool error (isError) whose text is
// "category: message (hint: ...)"; the server keeps serving.
//
// Long calls (vm_run, vm_start, workspace_create, workspace_exec,
// workspace_reset) send progress notifications when the client passed a
// progress token; cancelling a call cancels the SDK call, which kills the
// guest command.

// ServerOptions configure CreateServer. The zero value is usable.
type ServerOptions struct {
	// Version is reported as the server implementation version.
	Version string
	// Logger receives the MCP server's own records; nil keeps it silent.
	Logger *slog.Logger
}

// ServerInstructions tell a model how to choose between the tools.
const ServerInstructions = `pyro runs commands in disposable Linux microVMs (real VM isolation, no network unless asked).

How to choose:
- One-off command (check a fact, run a snippet, try a tool): call vm_run. It boots a fresh VM, runs the command with /bin/sh -c, returns exit_code/stdout/stderr and deletes the VM. Nothing persists between vm_run calls.
- Multi-step work (edit files, build, test, run a server, iterate): call workspace_create once, then workspace_exec as often as needed. /workspace persists across calls; use workspace_sync_push / seed_path to bring host files in, workspace_export to get files out, workspace_diff to see what changed since creation, snapshot_create + workspace_reset to checkpoint and roll back, service_* for long-running processes (dev servers, databases) and shell_* for interactive programs.
- Always call workspace_delete when you are done with a workspace; it holds a running VM until deleted.
- Secrets: pass them once to workspace_create (secrets), then expose them per call with secret_env; never put secret values in command strings.
- A command that exits non-zero is a normal result: read exit_code and stderr. A tool error (isError) means the call itself could not be done; its text starts with the category (not_found, invalid_argument, failed_precondition, already_exists, unavailable) and ends with a hint.
- vm_create/vm_start/vm_exec are lower-level lifecycle tools; prefer vm_run. Use vm_list_environments to see which environments (debian:12 default, debian:12-base, debian:12-build) are installed.

Defaults: environment debian:12, vcpu_count 1, mem_mib 1024, timeout_seconds 30, network off, allow_host_compat false.`

// CreateServer returns an MCP server whose tools drive c.
func CreateServer(c *Client, opts ServerOptions) *mcp.Server {
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "pyro", Title: "pyro microVM sandboxes", Version: version}, &mcp.ServerOptions{
		Instructions: ServerInstructions,
		Logger:       opts.Logger,
	})
	s.AddReceivingMiddleware(argumentErrors)
	t := tools{c: c}
	t.register(s)
	return s
}

// ToolNames lists the contract's MCP tool names in contract order.
func ToolNames() []string {
	return []string{
		"vm_run",
		"vm_list_environments", "vm_create", "vm_start", "vm_exec", "vm_stop", "vm_delete", "vm_status", "vm_network_info", "vm_reap_expired",
		"workspace_create", "workspace_sync_push", "workspace_exec", "workspace_export", "workspace_diff",
		"snapshot_create", "snapshot_list", "snapshot_delete", "workspace_reset",
		"service_start", "service_list", "service_status", "service_logs", "service_stop",
		"shell_open", "shell_read", "shell_write", "shell_signal", "shell_close",
		"workspace_status", "workspace_logs", "workspace_delete",
	}
}

// toolError is what a tool returns when it cannot do its job. Its text
// leads with the error's category.
type toolError struct{ err error }

func (e *toolError) Error() string {
	if errors.Is(e.err, context.Canceled) {
		return "unavailable: call cancelled: " + e.err.Error()
	}
	return errdefs.CategoryName(e.err) + ": " + e.err.Error()
}

func (e *toolError) Unwrap() error { return e.err }

// argumentErrors rewrites the SDK's own argument-validation failures (wrong
// types, missing required fields, unknown fields) into the same
// "invalid_argument: ..." shape as the SDK's errors.
func argumentErrors(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		if method != "tools/call" || err != nil {
			return res, err
		}
		r, ok := res.(*mcp.CallToolResult)
		if !ok || !r.IsError {
			return res, err
		}
		var te *toolError
		if errors.As(r.GetError(), &te) {
			return res, err
		}
		for _, ct := range r.Content {
			if tc, ok := ct.(*mcp.TextContent); ok && !strings.HasPrefix(tc.Text, "invalid_argument: ") {
				tc.Text = "invalid_argument: " + tc.Text + " (hint: check the arguments against the tool's input schema)"
			}
		}
		return r, nil
	}
}

// spec describes one tool for addTool.
type spec struct {
	name        string
	description string
	// defaults are JSON-schema defaults, applied to missing arguments.
	defaults map[string]any
	readOnly bool
	// destructive marks tools that delete state.
	destructive bool
}

// addTool registers a typed tool. h returns the structured result and its
// text rendering; an error becomes a tool error.
func addTool[In, Out any](s *mcp.Server, sp spec, h func(ctx context.Context, p *progress, in In) (Out, string, error)) {
	schema, err := jsonschema.For[In](nil)
	if err != nil {
		panic(fmt.Sprintf("tool %s: %v", sp.name, err))
	}
	for k, v := range sp.defaults {
		prop, ok := schema.Properties[k]
		if !ok {
			panic(fmt.Sprintf("tool %s: default for unknown property %q", sp.name, k))
		}
		if prop.Default, err = json.Marshal(v); err != nil {
			panic(err)
		}
	}
	tool := &mcp.Tool{Name: sp.name, Description: sp.description, InputSchema: schema}
	if sp.readOnly || sp.destructive {
		tool.Annotations = &mcp.ToolAnnotations{ReadOnlyHint: sp.readOnly, IdempotentHint: sp.readOnly}
		if sp.destructive {
			t := true
			tool.Annotations.DestructiveHint = &t
		}
	}
	mcp.AddTool(s, tool, func(ctx context.Context, req *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		p := newProgress(req)
		out, text, err := h(ctx, p, in)
		if err != nil {
			var zero Out
			return nil, zero, &toolError{err}
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, out, nil
	})
}

// progress sends MCP progress notifications when the client asked for
// them (a progress token on the call); otherwise it does nothing.
type progress struct {
	mu    sync.Mutex
	req   *mcp.CallToolRequest
	token any
	n     float64
}

func newProgress(req *mcp.CallToolRequest) *progress {
	p := &progress{req: req}
	if req != nil && req.Params != nil && req.Session != nil {
		p.token = req.Params.GetProgressToken()
	}
	return p
}

// step reports one step with a message.
func (p *progress) step(ctx context.Context, format string, args ...any) {
	if p == nil || p.token == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	_ = p.req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
		ProgressToken: p.token, Progress: p.n, Message: fmt.Sprintf(format, args...),
	})
}

// output returns an OnOutput callback that forwards guest output as
// progress messages (nil when nobody listens).
func (p *progress) output(ctx context.Context) func(stream string, b []byte) {
	if p == nil || p.token == nil {
		return nil
	}
	return func(stream string, b []byte) {
		const max = 4096
		s := string(b)
		if len(s) > max {
			s = s[:max] + "…"
		}
		p.step(ctx, "%s: %s", stream, s)
	}
}

// command maps the tools' shell-string command onto the SDK's argv.
func command(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, `pass a shell command string, e.g. "uname -a"`, "command is empty")
	}
	return []string{s}, nil
}

// renderExec is the text rendering of a command's result.
func renderExec(exitCode int, timedOut bool, signal string, durationMS int64, stdout, stderr string, stdoutTrunc, stderrTrunc bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "exit_code: %d (%d ms)", exitCode, durationMS)
	if timedOut {
		b.WriteString(", timed out and killed")
	}
	if signal != "" {
		fmt.Fprintf(&b, ", signal %s", signal)
	}
	b.WriteString("\n")
	section := func(name, s string, trunc bool) {
		if s == "" {
			fmt.Fprintf(&b, "%s: (empty)\n", name)
			return
		}
		fmt.Fprintf(&b, "%s:\n%s", name, s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
		if trunc {
			fmt.Fprintf(&b, "(%s truncated)\n", name)
		}
	}
	section("stdout", stdout, stdoutTrunc)
	section("stderr", stderr, stderrTrunc)
	return strings.TrimRight(b.String(), "\n")
}
