package mcpserver

import "github.com/pyro-mcp/pyro"

// Tool inputs. Field names are the contract's parameter names; fields
// without omitempty are required. Descriptions do not state defaults: the
// table sets each default once and the schema's description gets it
// appended (addTool).

type vmRunIn struct {
	Environment     string   `json:"environment,omitempty" jsonschema:"Environment (root filesystem) to boot: debian:12 (bash, coreutils, python3, curl, git), debian:12-base (minimal) or debian:12-build (compilers, make, pip); or an OCI image reference with a slash (docker.io/library/python:3.12-slim) that the host has pulled, or any image when the server runs with --allow-pull."`
	Command         string   `json:"command" jsonschema:"Shell command, run by /bin/sh -c (pipes, &&, redirections work). Required."`
	VCPUCount       int      `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64."`
	MemMiB          int      `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536."`
	TimeoutSeconds  int      `json:"timeout_seconds,omitempty" jsonschema:"Kill the command (its whole process group) after this many seconds; the result then says timed_out."`
	TTLSeconds      int      `json:"ttl_seconds,omitempty" jsonschema:"Bound on the VM's whole life in seconds, boot included; 0 means no bound beyond timeout_seconds."`
	Network         bool     `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT); false means no network device at all."`
	NetworkPolicy   string   `json:"network_policy,omitempty" jsonschema:"Network policy: off (no network device), egress (outbound; never the host, loopback, private or link-local ranges unless an allow_hosts CIDR names them) or egress+published-ports. network=true means egress."`
	AllowHosts      []string `json:"allow_hosts,omitempty" jsonschema:"With egress: allow only these hosts. Each entry is NAME, *.SUFFIX or CIDR with an optional :PORT, or a preset (@pypi @npm @github @debian). Refused lookups and connections are listed in network_denials."`
	AllowHostCompat bool     `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation, stated in the result) when no VM can boot. Takes effect only if the server was started with --allow-host-compat."`
}

type noIn struct{}

type vmCreateIn struct {
	Environment     string   `json:"environment,omitempty" jsonschema:"Environment to boot: debian:12, debian:12-base or debian:12-build; or an OCI image reference with a slash (docker.io/library/python:3.12-slim) that the host has pulled, or any image when the server runs with --allow-pull."`
	VCPUCount       int      `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64."`
	MemMiB          int      `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536."`
	TTLSeconds      int      `json:"ttl_seconds,omitempty" jsonschema:"Stop the VM this many seconds after creation (state expired; vm_reap_expired deletes it); 0 means no TTL."`
	Network         bool     `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT)."`
	NetworkPolicy   string   `json:"network_policy,omitempty" jsonschema:"Network policy: off (no network device), egress (outbound; never the host, loopback, private or link-local ranges unless an allow_hosts CIDR names them) or egress+published-ports. network=true means egress."`
	AllowHosts      []string `json:"allow_hosts,omitempty" jsonschema:"With egress: allow only these hosts. Each entry is NAME, *.SUFFIX or CIDR with an optional :PORT, or a preset (@pypi @npm @github @debian). Refused lookups and connections are listed in network_denials."`
	AllowHostCompat bool     `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation) when no VM can boot. Takes effect only if the server was started with --allow-host-compat."`
}

type vmIDIn struct {
	VMID string `json:"vm_id" jsonschema:"VM id returned by vm_create. Required."`
}

type vmExecIn struct {
	VMID           string `json:"vm_id" jsonschema:"VM id of a started VM (vm_create then vm_start). Required."`
	Command        string `json:"command" jsonschema:"Shell command, run by /bin/sh -c. Required."`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"Kill the command after this many seconds."`
}

type secretIn struct {
	Name     string `json:"name" jsonschema:"Secret name, environment-variable safe (letters, digits, '_'). Required."`
	Value    string `json:"value,omitempty" jsonschema:"The secret's UTF-8 value. Give value or file_path, not both."`
	FilePath string `json:"file_path,omitempty" jsonschema:"Host file whose content is the secret (a regular file of at most 64 KiB beneath an allowed root). Give value or file_path, not both."`
}

type workspaceCreateIn struct {
	Environment     string     `json:"environment,omitempty" jsonschema:"Environment to boot: debian:12, debian:12-base or debian:12-build; or an OCI image reference with a slash (docker.io/library/python:3.12-slim) that the host has pulled, or any image when the server runs with --allow-pull."`
	VCPUCount       int        `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64."`
	MemMiB          int        `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536."`
	Network         bool       `json:"network,omitempty" jsonschema:"Give the guest outbound networking (NAT)."`
	NetworkPolicy   string     `json:"network_policy,omitempty" jsonschema:"Network policy: off (no network device), egress (outbound; never the host, loopback, private or link-local ranges unless an allow_hosts CIDR names them) or egress+published-ports. network=true means egress."`
	AllowHosts      []string   `json:"allow_hosts,omitempty" jsonschema:"With egress: allow only these hosts. Each entry is NAME, *.SUFFIX or CIDR with an optional :PORT, or a preset (@pypi @npm @github @debian). Refused lookups and connections are listed in network_denials."`
	AllowHostCompat bool       `json:"allow_host_compat,omitempty" jsonschema:"Allow running on the host inside Linux namespaces (weaker isolation) when no VM can boot. Takes effect only if the server was started with --allow-host-compat."`
	SeedPath        string     `json:"seed_path,omitempty" jsonschema:"Optional host directory or local .tar/.tar.gz/.tgz (beneath an allowed root) whose content fills /workspace before the workspace is returned."`
	Secrets         []secretIn `json:"secrets,omitempty" jsonschema:"Optional guest-only secrets ({name, value} or {name, file_path}); values never appear in results or logs. Use them per call with secret_env."`
	nameLabelsIn
}

// nameLabelsIn are workspace_create's naming fields (tools_names.go).
type nameLabelsIn struct {
	Name   string            `json:"name,omitempty" jsonschema:"Optional name, usable wherever workspace_id is: a letter or digit, then up to 63 letters, digits, '.', '_' or '-'; unique among workspaces."`
	Labels map[string]string `json:"labels,omitempty" jsonschema:"Optional labels (key -> value) to find the workspace by with workspace_list."`
}

type workspaceIDIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id returned by workspace_create. Required."`
}

type workspaceSyncIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	SourcePath  string `json:"source_path" jsonschema:"Host directory or local .tar/.tar.gz/.tgz (beneath an allowed root) to import. Required."`
	Dest        string `json:"dest,omitempty" jsonschema:"Guest directory under /workspace to import into."`
}

type workspaceExecIn struct {
	WorkspaceID    string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Command        string            `json:"command" jsonschema:"Shell command, run by /bin/sh -c in /workspace. Required."`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"Kill the command after this many seconds."`
	SecretEnv      map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets as environment variables for this call only: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

type workspaceExportIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Path        string `json:"path" jsonschema:"File or directory under /workspace to export (absolute, or relative to /workspace). Required."`
	OutputPath  string `json:"output_path" jsonschema:"Host path to write, beneath an allowed root; it must not exist yet (export never overwrites). Required."`
}

type snapshotIn struct {
	WorkspaceID  string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	SnapshotName string `json:"snapshot_name" jsonschema:"Snapshot name: letters, digits, '.', '_', '-'. Required."`
}

type workspaceResetIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Snapshot    string `json:"snapshot,omitempty" jsonschema:"Snapshot to restore /workspace from; \"baseline\" is the create-time content."`
}

type readinessIn struct {
	Type         string `json:"type" jsonschema:"Probe type: file (path exists), tcp (address accepts connections), http (url answers 2xx/3xx or expect_status) or command (command exits 0). Required."`
	Path         string `json:"path,omitempty" jsonschema:"For type file: path that must exist, relative to the service's cwd."`
	Address      string `json:"address,omitempty" jsonschema:"For type tcp: host:port (a bare port means 127.0.0.1)."`
	URL          string `json:"url,omitempty" jsonschema:"For type http: URL to GET inside the guest."`
	ExpectStatus int    `json:"expect_status,omitempty" jsonschema:"For type http: exact status code expected; unset means any 2xx/3xx."`
	Command      string `json:"command,omitempty" jsonschema:"For type command: shell command that exits 0 when ready."`
}

type serviceStartIn struct {
	WorkspaceID         string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName         string            `json:"service_name" jsonschema:"Service name: letters, digits, '.', '_', '-', up to 64 characters. Required."`
	Command             string            `json:"command" jsonschema:"Shell command of the long-running process, run by /bin/sh -c. Required."`
	Cwd                 string            `json:"cwd,omitempty" jsonschema:"Working directory."`
	Readiness           *readinessIn      `json:"readiness,omitempty" jsonschema:"Optional readiness probe; with one, service_start returns once the service is ready (or fails with its last logs)."`
	ReadyTimeoutSeconds int               `json:"ready_timeout_seconds,omitempty" jsonschema:"How long to wait for readiness, in seconds."`
	ReadyIntervalMS     int               `json:"ready_interval_ms,omitempty" jsonschema:"Interval between readiness probes, in milliseconds."`
	SecretEnv           map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets as environment variables of the service: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
	Publish             []string          `json:"publish,omitempty" jsonschema:"Forward host loopback ports to guest ports while the service runs: [HOST_PORT:]GUEST_PORT each (HOST_PORT 1024-65535; none: a free one). Needs a workspace created with network_policy egress+published-ports."`
}

type serviceIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName string `json:"service_name" jsonschema:"Service name given to service_start. Required."`
}

type serviceLogsIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ServiceName string `json:"service_name" jsonschema:"Service name given to service_start. Required."`
	TailLines   int    `json:"tail_lines,omitempty" jsonschema:"Return the last this many lines."`
	All         bool   `json:"all,omitempty" jsonschema:"Return everything the bounded log still holds instead of the tail."`
}

type shellOpenIn struct {
	WorkspaceID string            `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Cwd         string            `json:"cwd,omitempty" jsonschema:"Working directory."`
	Cols        int               `json:"cols,omitempty" jsonschema:"Terminal width in columns."`
	Rows        int               `json:"rows,omitempty" jsonschema:"Terminal height in rows."`
	SecretEnv   map[string]string `json:"secret_env,omitempty" jsonschema:"Expose workspace secrets in the shell's environment: SECRET_NAME -> variable name, or \"\" for the secret's own name."`
}

type shellReadIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	Cursor      int64  `json:"cursor,omitempty" jsonschema:"Byte offset to read from: pass the previous read's next_cursor to get only new output; 0 is the start."`
	MaxChars    int    `json:"max_chars,omitempty" jsonschema:"Maximum characters to return; more is flagged by more=true."`
	Plain       bool   `json:"plain,omitempty" jsonschema:"Return the text as the screen shows it: escape sequences stripped, carriage returns and backspaces applied."`
	WaitForIdle int    `json:"wait_for_idle_ms,omitempty" jsonschema:"Keep reading until the shell printed nothing for this many milliseconds (the whole read waits at most 120 s); 0 returns at once."`
}

type shellWriteIn struct {
	WorkspaceID   string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID       string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	Input         string `json:"input" jsonschema:"Text to type into the shell. Required."`
	AppendNewline bool   `json:"append_newline,omitempty" jsonschema:"Press Enter after the input."`
}

type shellSignalIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
	SignalName  string `json:"signal_name,omitempty" jsonschema:"Signal for the shell's foreground process group: INT (Ctrl-C), TERM, KILL, HUP, QUIT, USR1, USR2, WINCH, CONT, STOP or TSTP."`
}

type shellIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	ShellID     string `json:"shell_id" jsonschema:"Shell id returned by shell_open. Required."`
}

// Tool outputs that the SDK returns as lists are wrapped in objects.

// EnvironmentList is the output of vm_list_environments.
type EnvironmentList struct {
	Environments []pyro.Environment `json:"environments"`
}

type snapshotList struct {
	WorkspaceID string          `json:"workspace_id"`
	Snapshots   []pyro.Snapshot `json:"snapshots"`
}

type snapshotDeleted struct {
	WorkspaceID  string `json:"workspace_id"`
	SnapshotName string `json:"snapshot_name"`
	Deleted      bool   `json:"deleted"`
}

type serviceList struct {
	WorkspaceID string         `json:"workspace_id"`
	Services    []pyro.Service `json:"services"`
}

type workspaceLogs struct {
	WorkspaceID string              `json:"workspace_id"`
	Entries     []pyro.HistoryEntry `json:"entries"`
	Count       int                 `json:"count"`
}
