package pyro

import (
	"context"
	"fmt"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Tool inputs. Field names are the contract's parameter names; fields
// without omitempty are required.

const (
	defaultEnvironment  = DefaultEnvironment
	defaultReadyTimeout = 30
	defaultReadyIntMS   = 500
)

type vmRunIn struct {
	Environment     string `json:"environment,omitempty" jsonschema:"Environment (root filesystem) to boot: debian:12 (default; bash, coreutils, python3, curl, git), debian:12-base (minimal) or debian:12-build (compilers, make, pip)."`
	Command         string `json:"command" jsonschema:"Shell command, run by /bin/sh -c (pipes, &&, redirections work). Required."`
	VCPUCount       int    `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64. Default 1."`
	MemMiB          int    `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536. Default 1024."`
	TimeoutSeconds  int    `json:"timeout_seconds,omitempty" jsonschema:"Kill the command (its whole process group) after this many seconds; the result then says timed_out. Default 30."`
	TTLSeconds      int    `json:"ttl_seconds,omitempty" jsonschema:"Bound on the VM's whole life in seconds, boot included. Default 0: no bound beyond timeout_seconds."`
	Network         bool   `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT). Default false: no network device at all."`
	AllowHostCompat bool   `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation, stated in the result) when no VM can boot. Default false."`
}

type noIn struct{}

type vmCreateIn struct {
	Environment     string `json:"environment,omitempty" jsonschema:"Environment to boot: debian:12 (default), debian:12-base or debian:12-build."`
	VCPUCount       int    `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64. Default 1."`
	MemMiB          int    `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536. Default 1024."`
	TTLSeconds      int    `json:"ttl_seconds,omitempty" jsonschema:"Stop the VM this many seconds after creation (state expired; vm_reap_expired deletes it). Default 0: no TTL."`
	Network         bool   `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT). Default false."`
	AllowHostCompat bool   `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation) when no VM can boot. Default false."`
}

type vmIDIn struct {
	VMID string `json:"vm_id" jsonschema:"VM id returned by vm_create. Required."`
}

type vmExecIn struct {
	VMID           string `json:"vm_id" jsonschema:"VM id of a started VM (vm_create then vm_start). Required."`
	Command        string `json:"command" jsonschema:"Shell command, run by /bin/sh -c. Required."`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"Kill the command after this many seconds. Default 30."`
}

type secretIn struct {
	Name     string `json:"name" jsonschema:"Secret name, environment-variable safe (letters, digits, '_'). Required."`
	Value    string `json:"value,omitempty" jsonschema:"The secret's UTF-8 value. Give value or file_path, not both."`
	FilePath string `json:"file_path,omitempty" jsonschema:"Host file whose content is the secret. Give value or file_path, not both."`
}

type workspaceCreateIn struct {
	Environment     string     `json:"environment,omitempty" jsonschema:"Environment to boot: debian:12 (default), debian:12-base or debian:12-build."`
	VCPUCount       int        `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64. Default 1."`
	MemMiB          int        `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536. Default 1024."`
	Network         bool       `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT). Default false."`
	AllowHostCompat bool       `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation) when no VM can boot. Default false."`
	SeedPath        string     `json:"seed_path,omitempty" jsonschema:"Optional host directory or local .tar/.tar.gz/.tgz whose content fills /workspace before the workspace is returned."`
	Secrets         []secretIn `json:"secrets,omitempty" jsonschema:"Optional guest-only secrets ({name, value} or {name, file_path}); values never appear in results or logs. Use them per call with secret_env."`
}

type workspaceIDIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id returned by workspace_create. Required."`
}

type workspaceSyncIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	SourcePath  string `json:"source_path" jsonschema:"Host directory or local .tar/.tar.gz/.tgz to import. Required."`
	Dest        string `json:"dest,omitempty" jsonschema:"Guest directory under /workspace to import into. Default /workspace."`
}

type workspaceExecIn struct {
	WorkspaceID    string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Command        string            `json:"command" jsonschema:"Shell command, run by /bin/sh -c in /workspace. Required."`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"Kill the command after this many seconds. Default 30."`
	SecretEnv      map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets as environment variables for this call only: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

type workspaceExportIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Path        string `json:"path" jsonschema:"File or directory under /workspace to export (absolute, or relative to /workspace). Required."`
	OutputPath  string `json:"output_path" jsonschema:"Host path to write; it must not exist yet (export never overwrites). Required."`
}

type snapshotIn struct {
	WorkspaceID  string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	SnapshotName string `json:"snapshot_name" jsonschema:"Snapshot name: letters, digits, '.', '_', '-'. Required."`
}

type workspaceResetIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Snapshot    string `json:"snapshot,omitempty" jsonschema:"Snapshot to restore /workspace from. Default \"baseline\" (the create-time content)."`
}

type readinessIn struct {
	Type         string `json:"type" jsonschema:"Probe type: file (path exists), tcp (address accepts connections), http (url answers 2xx/3xx or expect_status) or command (command exits 0). Required."`
	Path         string `json:"path,omitempty" jsonschema:"For type file: path that must exist, relative to the service's cwd."`
	Address      string `json:"address,omitempty" jsonschema:"For type tcp: host:port (a bare port means 127.0.0.1)."`
	URL          string `json:"url,omitempty" jsonschema:"For type http: URL to GET inside the guest."`
	ExpectStatus int    `json:"expect_status,omitempty" jsonschema:"For type http: exact status code expected. Default: any 2xx/3xx."`
	Command      string `json:"command,omitempty" jsonschema:"For type command: shell command that exits 0 when ready."`
}

type serviceStartIn struct {
	WorkspaceID         string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName         string            `json:"service_name" jsonschema:"Service name: letters, digits, '.', '_', '-', up to 64 characters. Required."`
	Command             string            `json:"command" jsonschema:"Shell command of the long-running process, run by /bin/sh -c. Required."`
	Cwd                 string            `json:"cwd,omitempty" jsonschema:"Working directory. Default /workspace."`
	Readiness           *readinessIn      `json:"readiness,omitempty" jsonschema:"Optional readiness probe; with one, service_start returns once the service is ready (or fails with its last logs)."`
	ReadyTimeoutSeconds int               `json:"ready_timeout_seconds,omitempty" jsonschema:"How long to wait for readiness, in seconds. Default 30."`
	ReadyIntervalMS     int               `json:"ready_interval_ms,omitempty" jsonschema:"Interval between readiness probes, in milliseconds. Default 500."`
	SecretEnv           map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets as environment variables of the service: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

type serviceIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName string `json:"service_name" jsonschema:"Service name given to service_start. Required."`
}

type serviceLogsIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName string `json:"service_name" jsonschema:"Service name given to service_start. Required."`
	TailLines   int    `json:"tail_lines,omitempty" jsonschema:"Return the last this many lines. Default 200."`
	All         bool   `json:"all,omitempty" jsonschema:"Return everything the bounded log still holds instead of the tail. Default false."`
}

type shellOpenIn struct {
	WorkspaceID string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Cwd         string            `json:"cwd,omitempty" jsonschema:"Working directory. Default /workspace."`
	Cols        int               `json:"cols,omitempty" jsonschema:"Terminal width in columns. Default 120."`
	Rows        int               `json:"rows,omitempty" jsonschema:"Terminal height in rows. Default 30."`
	SecretEnv   map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets in the shell's environment: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

type shellReadIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	Cursor      int64  `json:"cursor,omitempty" jsonschema:"Byte offset to read from: pass the previous read's next_cursor to get only new output. Default 0 (from the start)."`
	MaxChars    int    `json:"max_chars,omitempty" jsonschema:"Maximum characters to return; more is flagged by more=true. Default 65536."`
}

type shellWriteIn struct {
	WorkspaceID   string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID       string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	Input         string `json:"input" jsonschema:"Text to type into the shell. Required."`
	AppendNewline bool   `json:"append_newline,omitempty" jsonschema:"Press Enter after the input. Default true."`
}

type shellSignalIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	SignalName  string `json:"signal_name,omitempty" jsonschema:"Signal for the shell's foreground process group: INT, TERM, KILL, HUP, QUIT, USR1, USR2, WINCH, CONT or STOP. Default INT (Ctrl-C)."`
}

type shellIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
}

// Tool outputs that the SDK returns as lists are wrapped in objects.

// EnvironmentList is the output of vm_list_environments.
type EnvironmentList struct {
	Environments []Environment `json:"environments"`
}

type snapshotList struct {
	WorkspaceID string     `json:"workspace_id"`
	Snapshots   []Snapshot `json:"snapshots"`
}

type snapshotDeleted struct {
	WorkspaceID  string `json:"workspace_id"`
	SnapshotName string `json:"snapshot_name"`
	Deleted      bool   `json:"deleted"`
}

type serviceList struct {
	WorkspaceID string    `json:"workspace_id"`
	Services    []Service `json:"services"`
}

type workspaceLogs struct {
	WorkspaceID string         `json:"workspace_id"`
	Entries     []HistoryEntry `json:"entries"`
	Count       int            `json:"count"`
}

// defaults shared by the VM-shaped tools.
var (
	vmDefaults = map[string]any{"environment": defaultEnvironment, "vcpu_count": DefaultVCPUCount, "mem_mib": DefaultMemMiB,
		"network": false, "allow_host_compat": false}
	timeoutDefault = map[string]any{"timeout_seconds": DefaultTimeoutSeconds}
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

// tools binds the tool handlers to a client.
type tools struct{ c *Client }

func (t tools) register(s *mcp.Server) {
	c := t.c

	addTool(s, spec{name: "vm_run", defaults: merge(vmDefaults, timeoutDefault, map[string]any{"ttl_seconds": 0}),
		description: "Run one shell command in a fresh, isolated Linux microVM and return exit_code, stdout and stderr; the VM is deleted afterwards whatever happens. " +
			"Use this for one-off commands (check a fact, run a snippet, try a tool). Nothing persists between calls: for multi-step work use workspace_create. " +
			"A command that exits non-zero is a normal result. Booting takes a few seconds."},
		func(ctx context.Context, p *progress, in vmRunIn) (RunResult, string, error) {
			cmd, err := command(in.Command)
			if err != nil {
				return RunResult{}, "", err
			}
			p.step(ctx, "booting %s", orDefault(in.Environment, DefaultEnvironment))
			res, err := c.RunInVM(ctx, RunOptions{Environment: in.Environment, Command: cmd, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
				TimeoutSeconds: in.TimeoutSeconds, TTLSeconds: in.TTLSeconds, Network: in.Network, AllowHostCompat: in.AllowHostCompat,
				OnOutput: p.output(ctx)})
			if err != nil {
				return res, "", err
			}
			p.step(ctx, "done: exit_code %d", res.ExitCode)
			text := renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated)
			text += fmt.Sprintf("\n(vm %s, %s, boot %d ms, deleted)", res.VMID, res.Environment, res.BootMS)
			for _, w := range res.Warnings {
				text += "\nwarning: " + w
			}
			return res, text, nil
		})

	addTool(s, spec{name: "vm_list_environments", readOnly: true,
		description: "List the environments (root filesystems) a VM or workspace can boot, with whether each is installed. Use it to pick the environment argument of vm_run or workspace_create."},
		func(ctx context.Context, _ *progress, _ noIn) (EnvironmentList, string, error) {
			envs, err := c.ListEnvironments(ctx)
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
		})

	addTool(s, spec{name: "vm_create", defaults: merge(vmDefaults, map[string]any{"ttl_seconds": 0}),
		description: "Record a new VM without booting it; returns its vm_id in state created. Then call vm_start and vm_exec. " +
			"Lower-level than vm_run (prefer vm_run for one-off commands). vm_exec deletes the VM after its command."},
		func(ctx context.Context, _ *progress, in vmCreateIn) (VM, string, error) {
			v, err := c.CreateVM(ctx, CreateVMOptions{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
				TTLSeconds: in.TTLSeconds, Network: in.Network, AllowHostCompat: in.AllowHostCompat})
			return v, renderVM(v), err
		})

	addTool(s, spec{name: "vm_start",
		description: "Boot a created (or stopped) VM and wait until it is running. Starting a running VM just returns its status."},
		func(ctx context.Context, p *progress, in vmIDIn) (VM, string, error) {
			p.step(ctx, "booting vm %s", in.VMID)
			v, err := c.StartVM(ctx, in.VMID)
			if err == nil {
				p.step(ctx, "vm %s is %s", v.VMID, v.State)
			}
			return v, renderVM(v), err
		})

	addTool(s, spec{name: "vm_exec", defaults: timeoutDefault,
		description: "Run one shell command in a started VM and return exit_code, stdout and stderr. The VM is deleted after the command (auto-clean), whether it succeeded or not."},
		func(ctx context.Context, p *progress, in vmExecIn) (ExecResult, string, error) {
			cmd, err := command(in.Command)
			if err != nil {
				return ExecResult{}, "", err
			}
			res, err := c.ExecVM(ctx, in.VMID, ExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds, OnOutput: p.output(ctx)})
			return res, renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated), err
		})

	addTool(s, spec{name: "vm_stop",
		description: "Power a VM off; its files stay and vm_start boots it again. Stopping a stopped VM just returns its status."},
		func(ctx context.Context, _ *progress, in vmIDIn) (VM, string, error) {
			v, err := c.StopVM(ctx, in.VMID)
			return v, renderVM(v), err
		})

	addTool(s, spec{name: "vm_delete", destructive: true,
		description: "Stop a VM if needed and delete all its files. Deleting an unknown id is a not_found error."},
		func(ctx context.Context, _ *progress, in vmIDIn) (DeleteResult, string, error) {
			d, err := c.DeleteVM(ctx, in.VMID)
			return d, fmt.Sprintf("vm %s deleted (was %s)", in.VMID, d.PriorState), err
		})

	addTool(s, spec{name: "vm_status", readOnly: true,
		description: "Return a VM's observed state (created, starting, running, stopped, expired or broken with the reason) and its settings."},
		func(ctx context.Context, _ *progress, in vmIDIn) (VM, string, error) {
			v, err := c.StatusVM(ctx, in.VMID)
			return v, renderVM(v), err
		})

	addTool(s, spec{name: "vm_network_info", readOnly: true,
		description: "Describe a VM's network: none (no network device) or user-mode NAT with the guest IP, gateway and DNS."},
		func(ctx context.Context, _ *progress, in vmIDIn) (NetworkInfo, string, error) {
			n, err := c.NetworkInfoVM(ctx, in.VMID)
			if !n.Enabled {
				return n, fmt.Sprintf("vm %s: no network", in.VMID), err
			}
			return n, fmt.Sprintf("vm %s: %s network, guest %s/%d, gateway %s, dns %s", n.VMID, n.Mode, n.GuestIP, n.Prefix, n.Gateway, n.DNS), err
		})

	addTool(s, spec{name: "vm_reap_expired", destructive: true,
		description: "Delete every VM whose TTL passed or whose supervisor died (broken), and list what was removed."},
		func(ctx context.Context, _ *progress, _ noIn) (ReapResult, string, error) {
			r, err := c.ReapExpired(ctx)
			return r, fmt.Sprintf("removed %d vm(s)", r.Count), err
		})

	addTool(s, spec{name: "workspace_create", defaults: vmDefaults,
		description: "Create and boot a persistent workspace: a long-lived microVM whose /workspace directory survives across calls. " +
			"Use it for multi-step work (edit, build, test, run services); for a single command use vm_run. " +
			"Optionally seed /workspace from a host directory or archive (seed_path) and give guest-only secrets. " +
			"The create-time content is kept as the \"baseline\" snapshot (see workspace_diff, workspace_reset). Always call workspace_delete when done."},
		func(ctx context.Context, p *progress, in workspaceCreateIn) (Workspace, string, error) {
			var secrets []Secret
			for _, s := range in.Secrets {
				secrets = append(secrets, Secret{Name: s.Name, Value: s.Value, FilePath: s.FilePath})
			}
			p.step(ctx, "creating workspace (%s)", orDefault(in.Environment, DefaultEnvironment))
			ws, err := c.CreateWorkspace(ctx, CreateWorkspaceOptions{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB,
				Network: in.Network, AllowHostCompat: in.AllowHostCompat, SeedPath: in.SeedPath, Secrets: secrets})
			if err != nil {
				return ws, "", err
			}
			p.step(ctx, "workspace %s is %s", ws.WorkspaceID, ws.State)
			return ws, renderWorkspace(ws), nil
		})

	addTool(s, spec{name: "workspace_sync_push", defaults: map[string]any{"dest": "/workspace"},
		description: "Import a host directory or local .tar/.tar.gz/.tgz into a workspace, at dest under /workspace (default /workspace). Existing files with the same names are overwritten."},
		func(ctx context.Context, _ *progress, in workspaceSyncIn) (SyncResult, string, error) {
			r, err := c.PushWorkspaceSync(ctx, in.WorkspaceID, in.SourcePath, in.Dest)
			return r, fmt.Sprintf("imported %d file(s), %d bytes from %s into %s", r.FileCount, r.Bytes, r.SourcePath, r.Dest), err
		})

	addTool(s, spec{name: "workspace_exec", defaults: timeoutDefault,
		description: "Run one shell command in a workspace's /workspace and return exit_code, stdout and stderr; the workspace stays alive and files persist. " +
			"A command that exits non-zero is a normal result. Use secret_env to expose secrets to this call only."},
		func(ctx context.Context, p *progress, in workspaceExecIn) (ExecResult, string, error) {
			cmd, err := command(in.Command)
			if err != nil {
				return ExecResult{}, "", err
			}
			p.step(ctx, "running in workspace %s", in.WorkspaceID)
			res, err := c.ExecWorkspace(ctx, in.WorkspaceID, WorkspaceExecOptions{Command: cmd, TimeoutSeconds: in.TimeoutSeconds,
				SecretEnv: in.SecretEnv, OnOutput: p.output(ctx)})
			if err != nil {
				return res, "", err
			}
			p.step(ctx, "done: exit_code %d", res.ExitCode)
			return res, renderExec(res.ExitCode, res.TimedOut, res.Signal, res.DurationMS, res.Stdout, res.Stderr, res.StdoutTruncated, res.StderrTruncated), nil
		})

	addTool(s, spec{name: "workspace_export",
		description: "Copy one file or directory from /workspace to a host path (output_path), which must not exist yet."},
		func(ctx context.Context, _ *progress, in workspaceExportIn) (ExportResult, string, error) {
			r, err := c.ExportWorkspace(ctx, in.WorkspaceID, in.Path, in.OutputPath)
			return r, fmt.Sprintf("exported %s %s to %s (%d file(s), %d bytes)", r.Kind, r.Path, r.OutputPath, r.FileCount, r.Bytes), err
		})

	addTool(s, spec{name: "workspace_diff", readOnly: true,
		description: "Compare the current /workspace with its create-time baseline: added, modified and deleted paths, with unified diffs for text files."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (WorkspaceDiff, string, error) {
			d, err := c.DiffWorkspace(ctx, in.WorkspaceID)
			return d, renderDiff(d), err
		})

	addTool(s, spec{name: "snapshot_create",
		description: "Store the current /workspace as a named snapshot, to return to later with workspace_reset. Names are unique per workspace."},
		func(ctx context.Context, _ *progress, in snapshotIn) (Snapshot, string, error) {
			sn, err := c.CreateSnapshot(ctx, in.WorkspaceID, in.SnapshotName)
			return sn, fmt.Sprintf("snapshot %q created (%d bytes)", sn.Name, sn.Bytes), err
		})

	addTool(s, spec{name: "snapshot_list", readOnly: true,
		description: "List a workspace's snapshots: the implicit \"baseline\" and the named ones."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (snapshotList, string, error) {
			list, err := c.ListSnapshots(ctx, in.WorkspaceID)
			var names []string
			for _, sn := range list {
				names = append(names, sn.Name)
			}
			if list == nil {
				list = []Snapshot{}
			}
			return snapshotList{WorkspaceID: in.WorkspaceID, Snapshots: list}, "snapshots: " + strings.Join(names, ", "), err
		})

	addTool(s, spec{name: "snapshot_delete", destructive: true,
		description: "Delete a named snapshot. The baseline cannot be deleted."},
		func(ctx context.Context, _ *progress, in snapshotIn) (snapshotDeleted, string, error) {
			err := c.DeleteSnapshot(ctx, in.WorkspaceID, in.SnapshotName)
			return snapshotDeleted{WorkspaceID: in.WorkspaceID, SnapshotName: in.SnapshotName, Deleted: err == nil},
				fmt.Sprintf("snapshot %q deleted", in.SnapshotName), err
		})

	addTool(s, spec{name: "workspace_reset", destructive: true, defaults: map[string]any{"snapshot": "baseline"},
		description: "Recreate the whole workspace sandbox (fresh VM and root filesystem) and restore /workspace from a snapshot (default \"baseline\", the create-time content). " +
			"Command history, services and shells are cleared. Use it to roll back after a failed attempt."},
		func(ctx context.Context, p *progress, in workspaceResetIn) (Workspace, string, error) {
			p.step(ctx, "resetting workspace %s to %q", in.WorkspaceID, orDefault(in.Snapshot, "baseline"))
			ws, err := c.ResetWorkspace(ctx, in.WorkspaceID, in.Snapshot)
			if err != nil {
				return ws, "", err
			}
			p.step(ctx, "workspace %s is %s", ws.WorkspaceID, ws.State)
			return ws, renderWorkspace(ws), nil
		})

	addTool(s, spec{name: "service_start", defaults: map[string]any{"cwd": "/workspace", "ready_timeout_seconds": defaultReadyTimeout, "ready_interval_ms": defaultReadyIntMS},
		description: "Start a named long-running process (dev server, database) in a workspace. With a readiness probe it returns once the service is ready; " +
			"if the probe does not pass in time the service is stopped and the error carries its last log lines. Use service_logs to read its output."},
		func(ctx context.Context, p *progress, in serviceStartIn) (Service, string, error) {
			cmd, err := command(in.Command)
			if err != nil {
				return Service{}, "", err
			}
			var r *Readiness
			if in.Readiness != nil {
				r = &Readiness{Type: in.Readiness.Type, Path: in.Readiness.Path, Address: in.Readiness.Address, URL: in.Readiness.URL,
					ExpectStatus: in.Readiness.ExpectStatus, Command: in.Readiness.Command}
			}
			p.step(ctx, "starting service %s", in.ServiceName)
			sv, err := c.StartService(ctx, in.WorkspaceID, in.ServiceName, StartServiceOptions{Command: cmd, Cwd: in.Cwd, Readiness: r,
				ReadyTimeoutSeconds: in.ReadyTimeoutSeconds, ReadyIntervalMS: in.ReadyIntervalMS, SecretEnv: in.SecretEnv})
			return sv, renderService(sv), err
		})

	addTool(s, spec{name: "service_list", readOnly: true,
		description: "List a workspace's services with their states."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (serviceList, string, error) {
			list, err := c.ListServices(ctx, in.WorkspaceID)
			var lines []string
			for _, sv := range list {
				lines = append(lines, renderService(sv))
			}
			if list == nil {
				list = []Service{}
			}
			if len(lines) == 0 {
				lines = []string{"no services"}
			}
			return serviceList{WorkspaceID: in.WorkspaceID, Services: list}, strings.Join(lines, "\n"), err
		})

	addTool(s, spec{name: "service_status", readOnly: true,
		description: "Return one service's state (starting, running, ready, exited, failed, stopped), pid, exit code and times."},
		func(ctx context.Context, _ *progress, in serviceIn) (Service, string, error) {
			sv, err := c.StatusService(ctx, in.WorkspaceID, in.ServiceName)
			return sv, renderService(sv), err
		})

	addTool(s, spec{name: "service_logs", readOnly: true, defaults: map[string]any{"tail_lines": 200, "all": false},
		description: "Return the tail of a service's merged stdout/stderr (default the last 200 lines; all=true for everything the bounded log holds)."},
		func(ctx context.Context, _ *progress, in serviceLogsIn) (ServiceLogs, string, error) {
			l, err := c.LogsService(ctx, in.WorkspaceID, in.ServiceName, LogsServiceOptions{TailLines: in.TailLines, All: in.All})
			text := fmt.Sprintf("service %s (%s), %d line(s):\n%s", l.Name, l.State, len(l.Lines), strings.Join(l.Lines, "\n"))
			return l, text, err
		})

	addTool(s, spec{name: "service_stop",
		description: "Stop a service (SIGTERM to its process group, SIGKILL after a grace period). Stopping a stopped service returns its status."},
		func(ctx context.Context, _ *progress, in serviceIn) (Service, string, error) {
			sv, err := c.StopService(ctx, in.WorkspaceID, in.ServiceName)
			return sv, renderService(sv), err
		})

	addTool(s, spec{name: "shell_open", defaults: map[string]any{"cwd": "/workspace", "cols": 120, "rows": 30},
		description: "Open a persistent interactive PTY shell (bash, else sh) in a workspace; returns its shell_id. " +
			"Use shells for interactive programs and stateful sessions; for plain commands workspace_exec is simpler. Then shell_write input and shell_read output."},
		func(ctx context.Context, _ *progress, in shellOpenIn) (Shell, string, error) {
			sh, err := c.OpenShell(ctx, in.WorkspaceID, OpenShellOptions{Cwd: in.Cwd, Cols: in.Cols, Rows: in.Rows, SecretEnv: in.SecretEnv})
			return sh, fmt.Sprintf("shell %s opened in %s (%dx%d)", sh.ShellID, sh.Cwd, sh.Cols, sh.Rows), err
		})

	addTool(s, spec{name: "shell_read", readOnly: true, defaults: map[string]any{"cursor": 0, "max_chars": 65536},
		description: "Read a shell's merged output from cursor on. Pass the previous read's next_cursor as cursor to get only new output; more=true means more output is already waiting."},
		func(ctx context.Context, _ *progress, in shellReadIn) (ShellRead, string, error) {
			r, err := c.ReadShell(ctx, in.WorkspaceID, in.ShellID, ReadShellOptions{Cursor: in.Cursor, MaxChars: in.MaxChars})
			return r, fmt.Sprintf("[cursor %d -> next_cursor %d, state %s, more %v]\n%s", r.Cursor, r.NextCursor, r.State, r.More, r.Output), err
		})

	addTool(s, spec{name: "shell_write", defaults: map[string]any{"append_newline": true},
		description: "Type input into a shell, followed by Enter unless append_newline is false (default true). Read the effect with shell_read."},
		func(ctx context.Context, _ *progress, in shellWriteIn) (ShellWrite, string, error) {
			w, err := c.WriteShell(ctx, in.WorkspaceID, in.ShellID, in.Input, in.AppendNewline)
			return w, fmt.Sprintf("wrote %d bytes to shell %s", w.BytesWritten, in.ShellID), err
		})

	addTool(s, spec{name: "shell_signal", defaults: map[string]any{"signal_name": "INT"},
		description: "Send a signal to the shell's foreground process group (default INT, like Ctrl-C), e.g. to stop a running program."},
		func(ctx context.Context, _ *progress, in shellSignalIn) (ShellSignal, string, error) {
			r, err := c.SignalShell(ctx, in.WorkspaceID, in.ShellID, in.SignalName)
			return r, fmt.Sprintf("sent %s to shell %s", r.Signal, in.ShellID), err
		})

	addTool(s, spec{name: "shell_close", destructive: true,
		description: "Close a shell opened with shell_open and end every process it started. Close shells you no longer need."},
		func(ctx context.Context, _ *progress, in shellIn) (ShellClose, string, error) {
			r, err := c.CloseShell(ctx, in.WorkspaceID, in.ShellID)
			return r, fmt.Sprintf("shell %s closed", in.ShellID), err
		})

	addTool(s, spec{name: "workspace_status", readOnly: true,
		description: "Return a workspace's observed state, settings, seed, reset count, secret names, service counts and command count."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (Workspace, string, error) {
			ws, err := c.StatusWorkspace(ctx, in.WorkspaceID)
			return ws, renderWorkspace(ws), err
		})

	addTool(s, spec{name: "workspace_logs", readOnly: true,
		description: "Return a workspace's command history (each workspace_exec: command, exit code, duration, output excerpt)."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (workspaceLogs, string, error) {
			h, err := c.LogsWorkspace(ctx, in.WorkspaceID)
			var b strings.Builder
			for _, e := range h {
				fmt.Fprintf(&b, "#%d exit=%d %dms: %s\n", e.Seq, e.ExitCode, e.DurationMS, strings.Join(e.Command, " "))
			}
			if h == nil {
				h = []HistoryEntry{}
			}
			if len(h) == 0 {
				b.WriteString("no commands yet")
			}
			return workspaceLogs{WorkspaceID: in.WorkspaceID, Entries: h, Count: len(h)}, strings.TrimSpace(b.String()), err
		})

	addTool(s, spec{name: "workspace_delete", destructive: true,
		description: "Stop a workspace and delete everything it has: disk, snapshots, history and secrets. Call it when you are done with a workspace."},
		func(ctx context.Context, _ *progress, in workspaceIDIn) (DeleteResult, string, error) {
			d, err := c.DeleteWorkspace(ctx, in.WorkspaceID)
			return d, fmt.Sprintf("workspace %s deleted (was %s)", in.WorkspaceID, d.PriorState), err
		})
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func renderVM(v VM) string {
	s := fmt.Sprintf("vm %s: %s (%s, %d vCPU, %d MiB", v.VMID, v.State, v.Environment, v.VCPUCount, v.MemMiB)
	if v.Network {
		s += ", network"
	}
	s += ")"
	if v.Reason != "" {
		s += ": " + v.Reason
	}
	return s
}

func renderWorkspace(ws Workspace) string {
	s := fmt.Sprintf("workspace %s: %s (%s, %d vCPU, %d MiB", ws.WorkspaceID, ws.State, ws.Environment, ws.VCPUCount, ws.MemMiB)
	if ws.Network {
		s += ", network"
	}
	s += fmt.Sprintf("), seed %s (%d files), resets %d, commands %d, services %d running of %d",
		ws.WorkspaceSeed.Mode, ws.WorkspaceSeed.FileCount, ws.ResetCount, ws.CommandCount, ws.RunningServiceCount, ws.ServiceCount)
	if len(ws.Secrets) > 0 {
		var names []string
		for _, sc := range ws.Secrets {
			names = append(names, sc.Name)
		}
		s += ", secrets " + strings.Join(names, ", ")
	}
	return s
}

func renderDiff(d WorkspaceDiff) string {
	if len(d.Changes) == 0 {
		return "no changes since baseline"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d added, %d modified, %d deleted\n", len(d.Added), len(d.Modified), len(d.Deleted))
	for _, ch := range d.Changes {
		fmt.Fprintf(&b, "%s %s (%s)\n", ch.Status, ch.Path, ch.Kind)
		if ch.Diff != "" {
			b.WriteString(ch.Diff)
			if !strings.HasSuffix(ch.Diff, "\n") {
				b.WriteString("\n")
			}
		} else if ch.Note != "" {
			b.WriteString("  " + ch.Note + "\n")
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func renderService(sv Service) string {
	s := fmt.Sprintf("service %s: %s", sv.Name, sv.State)
	if sv.PID != 0 {
		s += fmt.Sprintf(" (pid %d)", sv.PID)
	}
	if sv.ExitCode != nil {
		s += fmt.Sprintf(", exit_code %d", *sv.ExitCode)
	}
	return s
}
