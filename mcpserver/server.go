// Package mcpserver serves pyro's Go SDK to MCP clients as the contract's
// tools (vm_run, the vm_* lifecycle tools, workspace, snapshot, service and
// shell tools). It is its own package so that a Go program using only the
// SDK never imports the MCP go-sdk or a JSON-schema library.
//
// Every tool maps its arguments onto one SDK call; the behaviour lives in
// the SDK. The tools are one table (tools.go): names, descriptions,
// annotations, schemas and handlers all come from it.
//
// Results: a guest command that fails is a normal result (exit_code,
// stderr). A tool that cannot do its job (unknown id, bad argument, no
// guest) returns a tool error (isError) whose text is
// "category: message (hint: ...)"; the server keeps serving, also when a
// handler panics.
//
// The model is untrusted: host paths it names are confined to allowed
// roots (paths.go), and allow_host_compat only takes effect when the
// person who started the server allowed it (Options.AllowHostCompat).
//
// Serve it on stdio with this package's StdioTransport, not the go-sdk's:
// that one ends the session on the first malformed line (stdio.go).
//
// Long calls (vm_run, vm_start, workspace_create, workspace_exec,
// workspace_reset) send progress notifications when the client passed a
// progress token; cancelling a call cancels the SDK call, which kills the
// guest command.
package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
)

// Options configure New. The zero value is usable: host paths are
// confined to the working directory (plus the client's roots) and host
// compatibility is refused.
type Options struct {
	// Version is reported as the server implementation version.
	Version string
	// Logger receives the MCP server's own records; nil keeps it silent.
	Logger *slog.Logger
	// AllowPaths are host directories beneath which tool arguments may
	// name host paths (seed_path, source_path, a secret's file_path,
	// output_path), in addition to the client's MCP roots. Empty means the
	// server's working directory, unless that is "/" or the user's home
	// (or an ancestor of it): then only client roots count. /proc, /sys
	// and /dev are refused.
	AllowPaths []string
	// IgnoreClientRoots stops the client's MCP roots from allowing paths.
	// Set it when clients are remote: their roots name their own files,
	// not this host's, and must not widen what the model can reach here.
	IgnoreClientRoots bool
	// AllowHostCompat lets a tool call's allow_host_compat=true take
	// effect. Without it such a call is refused: a model must not choose
	// the weaker sandbox on its own.
	AllowHostCompat bool
	// Profile selects the tools served (profiles.go); the zero value is
	// exactly the contract's tools.
	Profile Profile
	// NetworkPolicyMax and AllowHostsMax pin what a tool call may ask for
	// (tools_network.go): a request may only narrow them. Empty means egress
	// with any allowlist that opens no protected range.
	NetworkPolicyMax string
	AllowHostsMax    []string
	// ProjectPath, when set, is a git checkout whose tracked files seed
	// every workspace_create without seed_path (chosen by the person who
	// started the server, so it is not confined like tool arguments).
	ProjectPath string
}

// instructions tell a model how to choose between the tools. Tool names in
// it are checked against the table by a test; defaults come from package
// pyro.
var instructions = `pyro runs commands in disposable Linux microVMs (real VM isolation, no network unless asked).

How to choose:
- One-off command (check a fact, run a snippet, try a tool): call vm_run. It boots a fresh VM, runs the command with /bin/sh -c, returns exit_code/stdout/stderr and deletes the VM. Nothing persists between vm_run calls.
- Multi-step work (edit files, build, test, run a server, iterate): call workspace_create once, then workspace_exec as often as needed. ` + pyro.WorkspaceDir + ` persists across calls; use workspace_sync_push / seed_path to bring host files in, workspace_export to get files out, workspace_diff to see what changed since creation, snapshot_create + workspace_reset to checkpoint and roll back, service_* for long-running processes (dev servers, databases) and shell_* for interactive programs.
- Always call workspace_delete when you are done with a workspace; it holds a running VM until deleted.
- Secrets: pass them once to workspace_create (secrets), then expose them per call with secret_env; never put secret values in command strings.
- Network: guests have none unless asked. network_policy egress (or network=true) gives outbound access, never to the host, loopback, link-local or private ranges; allow_hosts narrows it to names, *.suffixes, CIDRs or presets (@pypi @npm @github @debian). Results list what was refused in network_denials: when a command fails for lack of network, read them and ask for exactly the entries needed.
- Host paths (seed_path, source_path, a secret's file_path, output_path) must lie beneath the client's roots or the directories the server was started with.
- A command that exits non-zero is a normal result: read exit_code and stderr. A tool error (isError) means the call itself could not be done; its text starts with the category (not_found, invalid_argument, failed_precondition, already_exists, unavailable, internal) and ends with a hint.
- Each result comes twice, in two forms for two readers: the text is a compact rendering for you (exit code first, then stdout and stderr, no JSON quoting or escaping), and structuredContent holds the same data as typed JSON fields for programs. They differ in form only; read the text, and nothing is lost.
- vm_create/vm_start/vm_exec are lower-level lifecycle tools; prefer vm_run. Use vm_list_environments to see which environments are installed.

` + fmt.Sprintf("Defaults: environment %s, vcpu_count %d, mem_mib %d, timeout_seconds %d, network %v, allow_host_compat %v.",
	pyro.DefaultEnvironment, pyro.DefaultVCPUCount, pyro.DefaultMemMiB, pyro.DefaultTimeoutSeconds, pyro.DefaultNetwork, pyro.DefaultAllowHostCompat)

// New returns an MCP server whose tools drive c.
func New(c *pyro.Client, opts Options) (*mcp.Server, error) {
	tools, err := toolsFor(opts.Profile)
	if err != nil {
		return nil, err
	}
	return newServer(c, opts, tools)
}

// ToolNames lists the contract's tools (what New serves without a
// Profile), in contract order.
func ToolNames() []string {
	names := make([]string, len(table))
	for i, t := range table {
		names[i] = t.name
	}
	return names
}

// newServer serves tools; tests pass extra tools.
func newServer(c *pyro.Client, opts Options, tools []tool) (*mcp.Server, error) {
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	paths, err := newConfinement(opts.AllowPaths, !opts.IgnoreClientRoots)
	if err != nil {
		return nil, err
	}
	netMax, err := maxPolicy(opts)
	if err != nil {
		return nil, err
	}
	env := &env{c: c, opts: opts, logger: logger, paths: paths, netMax: netMax}
	s := mcp.NewServer(&mcp.Implementation{Name: "pyro", Title: "pyro microVM sandboxes", Version: version}, &mcp.ServerOptions{
		Instructions:            instructionsFor(opts.Profile) + projectNote(opts.ProjectPath),
		Logger:                  opts.Logger,
		InitializedHandler:      paths.sessionStarted,
		RootsListChangedHandler: paths.rootsChanged,
	})
	s.AddReceivingMiddleware(argumentErrors, logLevels)
	for _, t := range tools {
		t.add(s, env)
	}
	return s, nil
}

// env is what every handler shares: the client and the server's options.
type env struct {
	c      *pyro.Client
	opts   Options
	logger *slog.Logger
	paths  *confinement
	netMax netpolicy.Policy // the network a tool call may ask for at most
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

// loggingLevels are the syslog severities MCP's logging/setLevel accepts.
var loggingLevels = map[mcp.LoggingLevel]bool{
	"debug": true, "info": true, "notice": true, "warning": true,
	"error": true, "critical": true, "alert": true, "emergency": true,
}

// logLevels answers logging/setLevel with an unknown level with -32602
// (invalid params); the go-sdk stores any string it is given.
func logLevels(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		if p, ok := req.GetParams().(*mcp.SetLoggingLevelParams); ok && method == "logging/setLevel" && !loggingLevels[p.Level] {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams,
				Message: fmt.Sprintf("invalid params: unknown logging level %q (want debug, info, notice, warning, error, critical, alert or emergency)", p.Level)}
		}
		return next(ctx, method, req)
	}
}

// recovered turns a handler's panic into an error, so that one bad call
// cannot take down the server and every client's session with it. The
// stack goes to the server's log, not to the model.
func recovered(logger *slog.Logger, tool string, v any) error {
	logger.Error("tool handler panicked", "tool", tool, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	return fmt.Errorf("tool %s failed unexpectedly: %v (hint: this is a bug in pyro; the server keeps running, report it with the server's log)", tool, v)
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
