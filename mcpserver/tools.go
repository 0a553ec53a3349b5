package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// hints are a tool's MCP annotations. Every tool states all four hints
// explicitly (addTool), because the spec's defaults for absent hints are the
// pessimistic ones (destructive, open world). Annotations are static, so:
//   - readOnly: the tool changes nothing (and is therefore idempotent).
//   - destructive: the tool itself deletes, overwrites, stops or kills
//     existing state. What a user command does inside its own sandbox is
//     not counted (workspace_exec is not destructive; vm_exec is, because it
//     deletes its VM).
//   - idempotent: calling again with the same arguments changes nothing more.
//   - openWorld: the tool may reach the network: it can request a guest
//     network (vm_run, vm_create, workspace_create) or runs a command in a
//     guest that may have one (vm_exec, workspace_exec, service_start,
//     shell_write). Everything else stays on this host.
type hints uint8

const (
	readOnly hints = 1 << iota
	destructive
	idempotent
	openWorld
)

// annotations renders h, with every hint set explicitly.
func (h hints) annotations(title string) *mcp.ToolAnnotations {
	ro := h&readOnly != 0
	d := h&destructive != 0 && !ro
	ow := h&openWorld != 0
	return &mcp.ToolAnnotations{Title: title, ReadOnlyHint: ro, DestructiveHint: &d, IdempotentHint: ro || h&idempotent != 0, OpenWorldHint: &ow}
}

// bounds are the inclusive ranges of every numeric input, by property
// name, wherever it occurs (nested objects included). addTool refuses a
// numeric property missing here, so a new number cannot go unbounded.
// The ranges are what the host and guest accept (mem_mib, cols/rows,
// vcpu_count) or generous sanity limits a model has no reason to exceed.
var bounds = map[string][2]float64{
	"vcpu_count":            {1, 64},
	"mem_mib":               {128, 65536},
	"timeout_seconds":       {1, 86400},
	"ttl_seconds":           {0, 30 * 86400},
	"ready_timeout_seconds": {1, 3600},
	"ready_interval_ms":     {10, 60000},
	"tail_lines":            {1, 100000},
	"cols":                  {1, 1000},
	"rows":                  {1, 1000},
	"cursor":                {0, 1<<53 - 1},
	"max_chars":             {1, 1 << 20},
	"max_bytes":             {1, pyro.MaxReadBytes},
	"expect_status":         {100, 599},
	"wait_for_idle_ms":      {0, pyro.MaxShellIdleMS},
	// Checkpoint numbers (tools_checkpoints.go).
	"to":    {0, 1<<31 - 1},
	"since": {1, 1<<31 - 1},
	// Forks of one workspace_fork call (tools_fork.go).
	"count": {1, pyro.MaxForkCount},
}

// enums are the fixed vocabularies of string inputs, by property name.
var enums = map[string][]any{
	// The agent's shell signal table.
	"signal_name": {"INT", "TERM", "KILL", "HUP", "QUIT", "USR1", "USR2", "WINCH", "CONT", "STOP", "TSTP"},
	// Readiness probe types (pyro.Readiness).
	"type": {"file", "tcp", "http", "command"},
	// Network policies (pyro.NetworkPolicies).
	"network_policy": {"off", "egress", "egress+published-ports"},
}

// constrain sets bounds and enums on every property of s, recursively; it
// fails on a numeric property without bounds.
func constrain(s *jsonschema.Schema) error {
	if s == nil {
		return nil
	}
	for name, prop := range s.Properties {
		if isNumeric(prop) {
			b, ok := bounds[name]
			if !ok {
				return fmt.Errorf("numeric property %q has no bounds", name)
			}
			prop.Minimum, prop.Maximum = &b[0], &b[1]
		}
		if e, ok := enums[name]; ok {
			prop.Enum = e
		}
		if err := constrain(prop); err != nil {
			return err
		}
	}
	if err := constrain(s.Items); err != nil {
		return err
	}
	return constrain(s.AdditionalProperties)
}

// isNumeric reports whether s admits integers or numbers.
func isNumeric(s *jsonschema.Schema) bool {
	for _, t := range append([]string{s.Type}, s.Types...) {
		if t == "integer" || t == "number" {
			return true
		}
	}
	return false
}

// tool is one row of the table: everything the server, the tool list and
// the tests know about a tool.
type tool struct {
	name        string
	title       string
	description string
	hints       hints
	// defaults are JSON-schema defaults, applied to missing arguments and
	// appended to the property's description.
	defaults map[string]any
	// add registers the tool with its typed handler (set by def).
	add func(s *mcp.Server, e *env)
}

// call is what a handler gets besides its input: the server's shared
// state and this call's progress reporter.
type call struct {
	*env
	req *mcp.CallToolRequest
	p   *progress
}

// hostCompat refuses allow_host_compat=true unless the server allows it:
// the model must not choose the weaker sandbox on its own.
func (cl *call) hostCompat(requested bool) error {
	if requested && !cl.opts.AllowHostCompat {
		return errdefs.New(errdefs.ErrFailedPrecondition,
			"omit allow_host_compat to require a real VM, or ask the user to start the server with `pyro mcp serve --allow-host-compat`",
			"allow_host_compat is not allowed by this server")
	}
	return nil
}

// handler is a tool's implementation: it returns the structured result and
// its text rendering; an error becomes a tool error.
type handler[In, Out any] func(ctx context.Context, cl *call, in In) (Out, string, error)

// def completes a table row with its typed handler.
func def[In, Out any](t tool, h handler[In, Out]) tool {
	t.add = func(s *mcp.Server, e *env) { addTool(s, e, t, h) }
	return t
}

// Defaults shared by the VM-shaped tools, from package pyro.
var (
	vmDefaults = map[string]any{"environment": pyro.DefaultEnvironment, "vcpu_count": pyro.DefaultVCPUCount, "mem_mib": pyro.DefaultMemMiB,
		"network": pyro.DefaultNetwork, "allow_host_compat": pyro.DefaultAllowHostCompat}
	timeoutDefault = map[string]any{"timeout_seconds": pyro.DefaultTimeoutSeconds}
	noTTL          = map[string]any{"ttl_seconds": 0}
)

func merge(ms ...map[string]any) map[string]any {
	out := map[string]any{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// table is the contract's tools, in contract order. The tool list, the
// names (ToolNames) and the tests derive from it.
var table = []tool{
	def(tool{name: "vm_run", title: "Run a command in a fresh microVM", hints: openWorld, defaults: merge(vmDefaults, timeoutDefault, noTTL),
		description: "Run one shell command in a fresh, isolated Linux microVM and return exit_code, stdout and stderr; the VM is deleted afterwards whatever happens. " +
			"Use this for one-off commands (check a fact, run a snippet, try a tool). Nothing persists between calls: for multi-step work use workspace_create. " +
			"A command that exits non-zero is a normal result. Booting takes a few seconds."}, vmRun),
	def(tool{name: "vm_list_environments", title: "List environments", hints: readOnly,
		description: "List the environments (root filesystems) a VM or workspace can boot, with whether each is installed. Use it to pick the environment argument of vm_run or workspace_create."}, vmListEnvironments),
	def(tool{name: "vm_create", title: "Create a VM", hints: openWorld, defaults: merge(vmDefaults, noTTL),
		description: "Record a new VM without booting it; returns its vm_id in state created. Then call vm_start and vm_exec. " +
			"Lower-level than vm_run (prefer vm_run for one-off commands). vm_exec deletes the VM after its command."}, vmCreate),
	def(tool{name: "vm_start", title: "Start a VM", hints: idempotent,
		description: "Boot a created (or stopped) VM and wait until it is running. Starting a running VM just returns its status."}, vmStart),
	def(tool{name: "vm_exec", title: "Run a command in a VM, then delete it", hints: destructive | openWorld, defaults: timeoutDefault,
		description: "Run one shell command in a started VM and return exit_code, stdout and stderr. The VM is deleted after the command (auto-clean), whether it succeeded or not."}, vmExec),
	def(tool{name: "vm_stop", title: "Stop a VM", hints: destructive | idempotent,
		description: "Power a VM off; its files stay and vm_start boots it again. Stopping a stopped VM just returns its status."}, vmStop),
	def(tool{name: "vm_delete", title: "Delete a VM", hints: destructive | idempotent,
		description: "Stop a VM if needed and delete all its files. Deleting an unknown id is a not_found error."}, vmDelete),
	def(tool{name: "vm_status", title: "VM status", hints: readOnly,
		description: "Return a VM's observed state (created, starting, running, stopped, expired or broken with the reason) and its settings."}, vmStatus),
	def(tool{name: "vm_network_info", title: "VM network", hints: readOnly,
		description: "Describe a VM's network: none (no network device) or pyro's policed userspace network with the policy in force, the guest IP, gateway, DNS and published ports."}, vmNetworkInfo),
	def(tool{name: "vm_reap_expired", title: "Delete expired VMs", hints: destructive,
		description: "Delete every VM whose TTL passed or whose supervisor died (broken), and list what was removed."}, vmReapExpired),

	def(tool{name: "workspace_create", title: "Create a persistent workspace", hints: openWorld, defaults: vmDefaults,
		description: "Create and boot a persistent workspace: a long-lived microVM whose /workspace directory survives across calls. " +
			"Use it for multi-step work (edit, build, test, run services); for a single command use vm_run. " +
			"Optionally seed /workspace from a host directory or archive (seed_path) and give guest-only secrets. " +
			"The create-time content is kept as the \"baseline\" snapshot (see workspace_diff, workspace_reset). Always call workspace_delete when done."}, workspaceCreate),
	def(tool{name: "workspace_sync_push", title: "Import host files into a workspace", hints: destructive | idempotent, defaults: map[string]any{"dest": pyro.WorkspaceDir},
		description: "Import a host directory or local .tar/.tar.gz/.tgz into a workspace, at dest under /workspace. Existing files with the same names are overwritten."}, workspaceSyncPush),
	def(tool{name: "workspace_exec", title: "Run a command in a workspace", hints: openWorld, defaults: timeoutDefault,
		description: "Run one shell command in a workspace's /workspace and return exit_code, stdout and stderr; the workspace stays alive and files persist. " +
			"A command that exits non-zero is a normal result. Use secret_env to expose secrets to this call only."}, workspaceExec),
	def(tool{name: "workspace_export", title: "Export files to the host",
		description: "Copy one file or directory from /workspace to a host path (output_path), which must not exist yet."}, workspaceExport),
	def(tool{name: "workspace_diff", title: "Diff a workspace against its baseline", hints: readOnly,
		description: "Compare the current /workspace with its create-time baseline: added, modified and deleted paths, with unified diffs for text files."}, workspaceDiff),
	def(tool{name: "snapshot_create", title: "Create a snapshot",
		description: "Store the current /workspace as a named snapshot, to return to later with workspace_reset. Names are unique per workspace."}, snapshotCreate),
	def(tool{name: "snapshot_list", title: "List snapshots", hints: readOnly,
		description: "List a workspace's snapshots: the implicit \"baseline\" and the named ones."}, snapshotListTool),
	def(tool{name: "snapshot_delete", title: "Delete a snapshot", hints: destructive | idempotent,
		description: "Delete a named snapshot. The baseline cannot be deleted."}, snapshotDelete),
	def(tool{name: "workspace_reset", title: "Reset a workspace", hints: destructive, defaults: map[string]any{"snapshot": pyro.BaselineSnapshot},
		description: "Recreate the whole workspace sandbox (fresh VM and root filesystem) and restore /workspace from a snapshot (the \"baseline\" is the create-time content). " +
			"Command history, services and shells are cleared. Use it to roll back after a failed attempt."}, workspaceReset),

	def(tool{name: "service_start", title: "Start a service", hints: openWorld,
		defaults: map[string]any{"cwd": pyro.WorkspaceDir, "ready_timeout_seconds": pyro.DefaultReadyTimeoutSeconds, "ready_interval_ms": pyro.DefaultReadyIntervalMS},
		description: "Start a named long-running process (dev server, database) in a workspace. With a readiness probe it returns once the probe passed (state running, ready_at set); " +
			"if the probe does not pass in time the service is stopped and the error carries its last log lines. Use service_logs to read its output."}, serviceStart),
	def(tool{name: "service_list", title: "List services", hints: readOnly,
		description: "List a workspace's services with their states."}, serviceListTool),
	def(tool{name: "service_status", title: "Service status", hints: readOnly,
		description: "Return one service's state (starting, running with ready_at once its probe passed, exited, failed, stopped), pid, exit code and times."}, serviceStatus),
	def(tool{name: "service_logs", title: "Service logs", hints: readOnly, defaults: map[string]any{"tail_lines": pyro.DefaultLogTailLines, "all": false},
		description: "Return the tail of a service's merged stdout/stderr (all=true for everything the bounded log holds)."}, serviceLogs),
	def(tool{name: "service_stop", title: "Stop a service", hints: destructive | idempotent,
		description: "Stop a service (SIGTERM to its process group, SIGKILL after a grace period). Stopping a stopped service returns its status."}, serviceStop),

	def(tool{name: "shell_open", title: "Open a shell", defaults: map[string]any{"cwd": pyro.WorkspaceDir, "cols": pyro.DefaultShellCols, "rows": pyro.DefaultShellRows},
		description: "Open a persistent interactive PTY shell (bash, else sh) in a workspace; returns its shell_id. " +
			"Use shells for interactive programs and stateful sessions; for plain commands workspace_exec is simpler. Then shell_write input and shell_read output."}, shellOpen),
	def(tool{name: "shell_read", title: "Read shell output", hints: readOnly, defaults: map[string]any{"cursor": pyro.DefaultShellCursor, "max_chars": pyro.DefaultShellMaxChars, "plain": false, "wait_for_idle_ms": 0},
		description: "Read a shell's merged output from cursor on. Pass the previous read's next_cursor as cursor to get only new output; more=true means more output is already waiting."}, shellRead),
	def(tool{name: "shell_write", title: "Type into a shell", hints: openWorld, defaults: map[string]any{"append_newline": pyro.DefaultAppendNewline},
		description: "Type input into a shell, followed by Enter unless append_newline is false. Read the effect with shell_read."}, shellWrite),
	def(tool{name: "shell_signal", title: "Signal a shell", hints: destructive, defaults: map[string]any{"signal_name": pyro.DefaultShellSignal},
		description: "Send a signal to the shell's foreground process group (INT is like Ctrl-C), e.g. to stop a running program."}, shellSignal),
	def(tool{name: "shell_close", title: "Close a shell", hints: destructive | idempotent,
		description: "Close a shell opened with shell_open and end every process it started. Close shells you no longer need."}, shellClose),

	def(tool{name: "workspace_status", title: "Workspace status", hints: readOnly,
		description: "Return a workspace's observed state, settings, seed, reset count, secret names, service counts and command count."}, workspaceStatus),
	def(tool{name: "workspace_logs", title: "Workspace command history", hints: readOnly,
		description: "Return a workspace's command history (each workspace_exec: command, exit code, duration, output excerpt)."}, workspaceLogsTool),
	def(tool{name: "workspace_delete", title: "Delete a workspace", hints: destructive | idempotent,
		description: "Stop a workspace and delete everything it has: disk, snapshots, history and secrets. Call it when you are done with a workspace."}, workspaceDelete),
}

// addTool registers one row with its typed handler. A handler's error
// becomes a tool error and a panic becomes one too: the server lives on.
func addTool[In, Out any](s *mcp.Server, e *env, t tool, h handler[In, Out]) {
	schema, err := jsonschema.For[In](nil)
	if err != nil {
		panic(fmt.Sprintf("tool %s: %v", t.name, err))
	}
	for k, v := range t.defaults {
		prop, ok := schema.Properties[k]
		if !ok {
			panic(fmt.Sprintf("tool %s: default for unknown property %q", t.name, k))
		}
		if prop.Default, err = json.Marshal(v); err != nil {
			panic(err)
		}
		prop.Description = strings.TrimSpace(prop.Description + " Default: " + string(prop.Default) + ".")
	}
	if err := constrain(schema); err != nil {
		panic(fmt.Sprintf("tool %s: %v", t.name, err))
	}
	outSchema, err := jsonschema.For[Out](nil)
	if err != nil {
		panic(fmt.Sprintf("tool %s: %v", t.name, err))
	}
	nullables(schema, false)
	nullables(outSchema, true)
	mt := &mcp.Tool{Name: t.name, Title: t.title, Description: t.description, InputSchema: schema, OutputSchema: outSchema,
		Annotations: t.hints.annotations(t.title)}
	mcp.AddTool(s, mt, func(ctx context.Context, req *mcp.CallToolRequest, in In) (res *mcp.CallToolResult, out Out, err error) {
		defer func() {
			if v := recover(); v != nil {
				var zero Out
				res, out, err = nil, zero, &toolError{recovered(e.logger, t.name, v)}
			}
		}()
		e.paths.learn(req)
		cl := &call{env: e, req: req, p: newProgress(req)}
		out, text, err := h(ctx, cl, in)
		if errors.Is(err, errNeedRoots) {
			// Handlers resolve host paths before doing anything, so
			// calling again once the roots are known repeats nothing.
			var zero Out
			return rootsInputRequest(), zero, nil
		}
		if err != nil {
			var zero Out
			return nil, zero, &toolError{err}
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, out, nil
	})
}

func vmRun(ctx context.Context, cl *call, in vmRunIn) (pyro.RunResult, string, error) {
	cmd, err := command(in.Command)
	if err != nil {
		return pyro.RunResult{}, "", err
	}
	if err := cl.hostCompat(in.AllowHostCompat); err != nil {
		return pyro.RunResult{}, "", err
	}
	if err := cl.network(in.Network, in.NetworkPolicy, in.AllowHosts); err != nil {
		return pyro.RunResult{}, "", err
	}
	stop, err := cl.longCall(ctx, in.TimeoutSeconds)
	if err != nil {
		return pyro.RunResult{}, "", err
	}
	defer stop()
	cl.p.step(ctx, "booting %s", orDefault(in.Environment, pyro.DefaultEnvironment))
	res, err := cl.c.RunInVM(ctx, pyro.RunOptions{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
		TTLSeconds: in.TTLSeconds, Network: in.Network, NetworkPolicy: in.NetworkPolicy, AllowHosts: in.AllowHosts, AllowHostCompat: in.AllowHostCompat,
		ExecOptions: pyro.ExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds, OnOutput: cl.p.output(ctx)}})
	if err != nil {
		return res, "", err
	}
	cl.p.step(ctx, "done: exit_code %d", res.ExitCode)
	text := renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated)
	text = withDenials(text, res.NetworkDenials)
	text += fmt.Sprintf("\n(vm %s, %s, boot %d ms, deleted)", res.VMID, res.Environment, res.BootMS)
	for _, w := range res.Warnings {
		text += "\nwarning: " + w
	}
	return res, text, nil
}

func vmListEnvironments(ctx context.Context, cl *call, _ noIn) (EnvironmentList, string, error) {
	envs, err := cl.c.ListEnvironments(ctx)
	if err != nil {
		return EnvironmentList{}, "", err
	}
	var b strings.Builder
	for _, e := range envs {
		state := "not installed"
		if e.Installed {
			state = "installed"
		}
		if e.Damaged != "" {
			state = "damaged: " + e.Damaged
		}
		def := ""
		if e.Default {
			def = " (default)"
		}
		fmt.Fprintf(&b, "%s%s: %s. %s\n", e.Name, def, state, e.Description)
	}
	// Manifests are large; the list names what matters.
	for i := range envs {
		envs[i].Manifest = nil
	}
	return EnvironmentList{Environments: envs}, strings.TrimSpace(b.String()), nil
}

func vmCreate(ctx context.Context, cl *call, in vmCreateIn) (pyro.VM, string, error) {
	if err := cl.hostCompat(in.AllowHostCompat); err != nil {
		return pyro.VM{}, "", err
	}
	if err := cl.network(in.Network, in.NetworkPolicy, in.AllowHosts); err != nil {
		return pyro.VM{}, "", err
	}
	v, err := cl.c.CreateVM(ctx, pyro.CreateVMOptions{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
		TTLSeconds: in.TTLSeconds, Network: in.Network, NetworkPolicy: in.NetworkPolicy, AllowHosts: in.AllowHosts, AllowHostCompat: in.AllowHostCompat})
	return v, renderVM(v), err
}

func vmStart(ctx context.Context, cl *call, in vmIDIn) (pyro.VM, string, error) {
	cl.p.step(ctx, "booting vm %s", in.VMID)
	v, err := cl.c.StartVM(ctx, in.VMID)
	if err == nil {
		cl.p.step(ctx, "vm %s is %s", v.VMID, v.State)
	}
	return v, renderVM(v), err
}

func vmExec(ctx context.Context, cl *call, in vmExecIn) (pyro.ExecResult, string, error) {
	cmd, err := command(in.Command)
	if err != nil {
		return pyro.ExecResult{}, "", err
	}
	res, err := cl.c.ExecVM(ctx, in.VMID, pyro.ExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds, OnOutput: cl.p.output(ctx)})
	return res, withDenials(renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated), res.NetworkDenials), err
}

func vmStop(ctx context.Context, cl *call, in vmIDIn) (pyro.VM, string, error) {
	v, err := cl.c.StopVM(ctx, in.VMID)
	return v, renderVM(v), err
}

func vmDelete(ctx context.Context, cl *call, in vmIDIn) (pyro.DeleteResult, string, error) {
	d, err := cl.c.DeleteVM(ctx, in.VMID)
	return d, fmt.Sprintf("vm %s deleted (was %s)", in.VMID, d.PriorState), err
}

func vmStatus(ctx context.Context, cl *call, in vmIDIn) (pyro.VM, string, error) {
	v, err := cl.c.StatusVM(ctx, in.VMID)
	return v, renderVM(v), err
}

func vmNetworkInfo(ctx context.Context, cl *call, in vmIDIn) (pyro.NetworkInfo, string, error) {
	n, err := cl.c.NetworkInfoVM(ctx, in.VMID)
	if !n.Enabled {
		return n, fmt.Sprintf("vm %s: no network", in.VMID), err
	}
	return n, fmt.Sprintf("vm %s: %s network, guest %s/%d, gateway %s, dns %s", n.VMID, n.Mode, n.GuestIP, n.Prefix, n.Gateway, n.DNS), err
}

func vmReapExpired(ctx context.Context, cl *call, _ noIn) (pyro.ReapResult, string, error) {
	r, err := cl.c.ReapExpired(ctx)
	return r, fmt.Sprintf("removed %d vm(s)", r.Count), err
}

func workspaceCreate(ctx context.Context, cl *call, in workspaceCreateIn) (pyro.Workspace, string, error) {
	if err := cl.hostCompat(in.AllowHostCompat); err != nil {
		return pyro.Workspace{}, "", err
	}
	if err := cl.network(in.Network, in.NetworkPolicy, in.AllowHosts); err != nil {
		return pyro.Workspace{}, "", err
	}
	// Every host path is resolved before anything is created.
	seed := ""
	if in.SeedPath != "" {
		var err error
		if seed, err = cl.paths.source(cl.req, "seed_path", in.SeedPath); err != nil {
			return pyro.Workspace{}, "", err
		}
	}
	var secrets []pyro.Secret
	for _, s := range in.Secrets {
		sec := pyro.Secret{Name: s.Name, Value: s.Value}
		if s.FilePath != "" {
			p, done, err := cl.paths.secretFile(cl.req, "secret "+strconv.Quote(s.Name)+" file_path", s.FilePath)
			if err != nil {
				return pyro.Workspace{}, "", err
			}
			defer done()
			sec.FilePath = p
		}
		secrets = append(secrets, sec)
	}
	project := ""
	if seed == "" {
		project = cl.opts.ProjectPath // the server's project seeds it (profiles.go)
	}
	cl.p.step(ctx, "creating workspace (%s)", orDefault(in.Environment, pyro.DefaultEnvironment))
	ws, err := cl.c.CreateWorkspace(ctx, pyro.CreateWorkspaceOptions{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
		Network: in.Network, NetworkPolicy: in.NetworkPolicy, AllowHosts: in.AllowHosts, AllowHostCompat: in.AllowHostCompat, SeedPath: seed, Secrets: secrets, Name: in.Name, Labels: in.Labels,
		ProjectPath: project,
		// A model's commands are undoable by default (workspace_undo).
		Checkpoints: true})
	if err != nil {
		return ws, "", err
	}
	cl.p.step(ctx, "workspace %s is %s", ws.WorkspaceID, ws.State)
	return ws, renderWorkspace(ws), nil
}

func workspaceSyncPush(ctx context.Context, cl *call, in workspaceSyncIn) (pyro.SyncResult, string, error) {
	src, err := cl.paths.source(cl.req, "source_path", in.SourcePath)
	if err != nil {
		return pyro.SyncResult{}, "", err
	}
	r, err := cl.c.PushWorkspaceSync(ctx, in.WorkspaceID, src, in.Dest)
	return r, fmt.Sprintf("imported %d file(s), %d bytes from %s into %s", r.FileCount, r.Bytes, r.SourcePath, r.Dest), err
}

func workspaceExec(ctx context.Context, cl *call, in workspaceExecIn) (pyro.ExecResult, string, error) {
	cmd, err := command(in.Command)
	if err != nil {
		return pyro.ExecResult{}, "", err
	}
	stop, err := cl.longCall(ctx, in.TimeoutSeconds)
	if err != nil {
		return pyro.ExecResult{}, "", err
	}
	defer stop()
	cl.p.step(ctx, "running in workspace %s", in.WorkspaceID)
	res, err := cl.c.ExecWorkspace(ctx, in.WorkspaceID, pyro.ExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds,
		SecretEnv: in.SecretEnv, OnOutput: cl.p.output(ctx)})
	if err != nil {
		return res, "", err
	}
	cl.p.step(ctx, "done: exit_code %d", res.ExitCode)
	return res, withDenials(renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated), res.NetworkDenials), nil
}

func workspaceExport(ctx context.Context, cl *call, in workspaceExportIn) (pyro.ExportResult, string, error) {
	out, real, done, err := cl.paths.output(cl.req, "output_path", in.OutputPath)
	if err != nil {
		return pyro.ExportResult{}, "", err
	}
	defer done()
	r, err := cl.c.ExportWorkspace(ctx, in.WorkspaceID, in.Path, out, nil)
	if r.OutputPath != "" {
		r.OutputPath = real // not the /proc/self/fd path the SDK wrote through
	}
	return r, fmt.Sprintf("exported %s %s to %s (%d file(s), %d bytes)", r.Kind, r.Path, r.OutputPath, r.FileCount, r.Bytes), err
}

func workspaceDiff(ctx context.Context, cl *call, in workspaceIDIn) (pyro.WorkspaceDiff, string, error) {
	d, err := cl.c.DiffWorkspace(ctx, in.WorkspaceID)
	return d, renderDiff(d), err
}

func snapshotCreate(ctx context.Context, cl *call, in snapshotIn) (pyro.Snapshot, string, error) {
	sn, err := cl.c.CreateSnapshot(ctx, in.WorkspaceID, in.SnapshotName)
	return sn, fmt.Sprintf("snapshot %q created (%d bytes)", sn.Name, sn.Bytes), err
}

func snapshotListTool(ctx context.Context, cl *call, in workspaceIDIn) (snapshotList, string, error) {
	list, err := cl.c.ListSnapshots(ctx, in.WorkspaceID)
	var names []string
	for _, sn := range list {
		names = append(names, sn.Name)
	}
	if list == nil {
		list = []pyro.Snapshot{}
	}
	return snapshotList{WorkspaceID: in.WorkspaceID, Snapshots: list}, "snapshots: " + strings.Join(names, ", "), err
}

func snapshotDelete(ctx context.Context, cl *call, in snapshotIn) (snapshotDeleted, string, error) {
	err := cl.c.DeleteSnapshot(ctx, in.WorkspaceID, in.SnapshotName)
	return snapshotDeleted{WorkspaceID: in.WorkspaceID, SnapshotName: in.SnapshotName, Deleted: err == nil},
		fmt.Sprintf("snapshot %q deleted", in.SnapshotName), err
}

func workspaceReset(ctx context.Context, cl *call, in workspaceResetIn) (pyro.Workspace, string, error) {
	cl.p.step(ctx, "resetting workspace %s to %q", in.WorkspaceID, orDefault(in.Snapshot, pyro.BaselineSnapshot))
	ws, err := cl.c.ResetWorkspace(ctx, in.WorkspaceID, in.Snapshot)
	if err != nil {
		return ws, "", err
	}
	cl.p.step(ctx, "workspace %s is %s", ws.WorkspaceID, ws.State)
	return ws, renderWorkspace(ws), nil
}

func serviceStart(ctx context.Context, cl *call, in serviceStartIn) (pyro.Service, string, error) {
	cmd, err := command(in.Command)
	if err != nil {
		return pyro.Service{}, "", err
	}
	var r *pyro.Readiness
	if in.Readiness != nil {
		r = &pyro.Readiness{Type: in.Readiness.Type, Path: in.Readiness.Path, Address: in.Readiness.Address, URL: in.Readiness.URL,
			ExpectStatus: in.Readiness.ExpectStatus, Command: in.Readiness.Command}
	}
	cl.p.step(ctx, "starting service %s", in.ServiceName)
	sv, err := cl.c.StartService(ctx, in.WorkspaceID, in.ServiceName, pyro.StartServiceOptions{Command: cmd, Cwd: in.Cwd, Readiness: r,
		ReadyTimeoutSeconds: in.ReadyTimeoutSeconds, ReadyIntervalMS: in.ReadyIntervalMS, SecretEnv: in.SecretEnv, Publish: in.Publish})
	return sv, renderService(sv), err
}

func serviceListTool(ctx context.Context, cl *call, in workspaceIDIn) (serviceList, string, error) {
	list, err := cl.c.ListServices(ctx, in.WorkspaceID)
	var lines []string
	for _, sv := range list {
		lines = append(lines, renderService(sv))
	}
	if list == nil {
		list = []pyro.Service{}
	}
	if len(lines) == 0 {
		lines = []string{"no services"}
	}
	return serviceList{WorkspaceID: in.WorkspaceID, Services: list}, strings.Join(lines, "\n"), err
}

func serviceStatus(ctx context.Context, cl *call, in serviceIn) (pyro.Service, string, error) {
	sv, err := cl.c.StatusService(ctx, in.WorkspaceID, in.ServiceName)
	return sv, renderService(sv), err
}

func serviceLogs(ctx context.Context, cl *call, in serviceLogsIn) (pyro.ServiceLogs, string, error) {
	l, err := cl.c.LogsService(ctx, in.WorkspaceID, in.ServiceName, &pyro.LogsServiceOptions{TailLines: in.TailLines, All: in.All})
	text := fmt.Sprintf("service %s (%s), %d line(s):\n%s", l.Name, l.State, len(l.Lines), strings.Join(l.Lines, "\n"))
	return l, text, err
}

func serviceStop(ctx context.Context, cl *call, in serviceIn) (pyro.Service, string, error) {
	sv, err := cl.c.StopService(ctx, in.WorkspaceID, in.ServiceName)
	return sv, renderService(sv), err
}

func shellOpen(ctx context.Context, cl *call, in shellOpenIn) (pyro.Shell, string, error) {
	sh, err := cl.c.OpenShell(ctx, in.WorkspaceID, &pyro.OpenShellOptions{Cwd: in.Cwd, Cols: in.Cols, Rows: in.Rows, SecretEnv: in.SecretEnv})
	return sh, fmt.Sprintf("shell %s opened in %s (%dx%d)", sh.ShellID, sh.Cwd, sh.Cols, sh.Rows), err
}

func shellRead(ctx context.Context, cl *call, in shellReadIn) (pyro.ShellRead, string, error) {
	r, err := cl.c.ReadShell(ctx, in.WorkspaceID, in.ShellID, &pyro.ReadShellOptions{Cursor: in.Cursor, MaxChars: in.MaxChars, Plain: in.Plain, WaitForIdleMS: in.WaitForIdle})
	return r, fmt.Sprintf("[cursor %d -> next_cursor %d, state %s, more %v]\n%s", r.Cursor, r.NextCursor, r.State, r.More, r.Output), err
}

func shellWrite(ctx context.Context, cl *call, in shellWriteIn) (pyro.ShellWrite, string, error) {
	w, err := cl.c.WriteShell(ctx, in.WorkspaceID, in.ShellID, in.Input, &pyro.WriteShellOptions{AppendNewline: pyro.Bool(in.AppendNewline)})
	return w, fmt.Sprintf("wrote %d bytes to shell %s", w.BytesWritten, in.ShellID), err
}

func shellSignal(ctx context.Context, cl *call, in shellSignalIn) (pyro.ShellSignal, string, error) {
	r, err := cl.c.SignalShell(ctx, in.WorkspaceID, in.ShellID, in.SignalName)
	return r, fmt.Sprintf("sent %s to shell %s", r.Signal, in.ShellID), err
}

func shellClose(ctx context.Context, cl *call, in shellIn) (pyro.ShellClose, string, error) {
	r, err := cl.c.CloseShell(ctx, in.WorkspaceID, in.ShellID)
	return r, fmt.Sprintf("shell %s closed", in.ShellID), err
}

func workspaceStatus(ctx context.Context, cl *call, in workspaceIDIn) (pyro.Workspace, string, error) {
	ws, err := cl.c.StatusWorkspace(ctx, in.WorkspaceID)
	return ws, renderWorkspace(ws), err
}

func workspaceLogsTool(ctx context.Context, cl *call, in workspaceIDIn) (workspaceLogs, string, error) {
	h, err := cl.c.LogsWorkspace(ctx, in.WorkspaceID)
	var b strings.Builder
	for _, e := range h {
		fmt.Fprintf(&b, "#%d exit=%d %dms: %s\n", e.Seq, e.ExitCode, e.DurationMS, strings.Join(e.Command, " "))
	}
	if h == nil {
		h = []pyro.HistoryEntry{}
	}
	if len(h) == 0 {
		b.WriteString("no commands yet")
	}
	return workspaceLogs{WorkspaceID: in.WorkspaceID, Entries: h, Count: len(h)}, strings.TrimSpace(b.String()), err
}

func workspaceDelete(ctx context.Context, cl *call, in workspaceIDIn) (pyro.DeleteResult, string, error) {
	d, err := cl.c.DeleteWorkspace(ctx, in.WorkspaceID)
	return d, fmt.Sprintf("workspace %s deleted (was %s)", in.WorkspaceID, d.PriorState), err
}
