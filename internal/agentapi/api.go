// Package agentapi is the wire protocol between the host and the pyro guest
// agent, and the host-side client for it.
//
// # Transport
//
// The host holds one raw byte stream to the guest (QEMU: a virtio-serial port
// named PortName, backed by a unix socket on the host; Firecracker: a hybrid
// vsock; host-compat: a unix socket). The host is the yamux client and the
// guest the yamux server. Every request is plain HTTP/1.1 on its own yamux
// stream (a stream may be reused for several requests, like a keep-alive TCP
// connection). Bodies are JSON with snake_case fields.
//
// The host dials the channel once and keeps it: on the QEMU side, bytes the
// host writes before the guest has opened its port are kept, so the host may
// connect and send a request while the guest is still booting; the reply
// arrives once the agent is up. The guest never writes unprompted (no yamux
// keepalives from the guest side), because a guest write while no host is
// connected blocks.
//
// # Endpoints
//
//	GET  /v1/health    -> Health
//	POST /v1/exec      ExecRequest -> newline-delimited JSON Events
//	POST /v1/shutdown  -> ShutdownResponse, then the guest powers off
//	POST /v1/secrets   SecretsRequest -> SecretsResponse (see secrets.go)
//	POST /v1/files/push?dest=ABS_PATH  tar stream -> PushResult
//	GET  /v1/files/pull?path=ABS_PATH  -> tar stream (header X-Pyro-Kind)
//
//	POST /v1/services              ServiceStartRequest -> ServiceStatus (once ready)
//	GET  /v1/services              -> ServiceList
//	GET  /v1/services/NAME         -> ServiceStatus
//	GET  /v1/services/NAME/logs    ?tail_lines=200&all=false -> ServiceLogs
//	POST /v1/services/NAME/stop    -> ServiceStatus
//	POST /v1/services/reset        -> ServiceReset
//	POST /v1/shells                ShellOpenRequest -> ShellInfo
//	GET  /v1/shells                -> ShellList
//	GET  /v1/shells/ID             -> ShellInfo
//	GET  /v1/shells/ID/read        ?cursor=0&max_chars=65536&wait_ms=0 -> ShellReadResponse
//	POST /v1/shells/ID/write       ShellWriteRequest -> ShellWriteResponse
//	POST /v1/shells/ID/signal      ShellSignalRequest -> ShellSignalResponse
//	POST /v1/shells/ID/resize      ShellResizeRequest -> ShellInfo
//	POST /v1/shells/ID/close       -> ShellCloseResponse
//	POST /v1/shells/reset          -> ShellReset
//
// Files: push extracts an uncompressed tar body into dest (created with
// parents if missing), safely: absolute names, ".." and paths through a
// symlink are rejected (invalid_argument), an existing entry in the way is
// replaced rather than written through; modes, mtimes, symlinks and hard
// links are kept, owners are not (files belong to root). Entries already
// extracted stay when a later one fails. Pull answers with an uncompressed
// tar: for a directory its contents, named relative to it ("a.txt",
// "sub/b.bin"), with X-Pyro-Kind: dir; for a regular file or symlink one
// entry named by its base name, with X-Pyro-Kind: file. A missing path is
// not_found. A pull that fails mid-stream ends the response early, so the
// tar is truncated. Both are idempotent in effect and may run concurrently
// with execs; push and every exec end with a syncfs of /workspace, so data
// they wrote survives a later kill of the VMM.
//
// # Call order
//
// WaitReady (retrying Health) first; then any number of Exec, file, service
// and shell calls, in any order and concurrently; Shutdown last. Nothing else
// is required in between. Services and shells belong to the agent process,
// not to a connection: they survive the host disconnecting and reconnecting,
// and are lost only when the agent process restarts or the guest powers off.
//
// # Idempotency and concurrency
//
//   - Health is read-only and safe to repeat and to call concurrently.
//   - Exec is not idempotent: each call starts a new process. Any number of
//     Exec calls may run at once; each runs in its own process group. A retry
//     after a lost connection may run the command twice.
//   - The exec response streams Events: zero or more "stdout"/"stderr" events
//     in arrival order (per stream), each with at most MaxEventDataBytes of
//     output, then exactly one "exit" event carrying the ExecResult without
//     output (stdout and stderr empty): each byte crosses the channel once,
//     and the host assembles the result from the events (Client.Exec does).
//     A response that ends without an "exit" event means the agent or
//     channel failed.
//   - If the exec request ends early (client cancels, channel closes), the
//     guest kills the command's whole process group with SIGKILL.
//   - Shutdown is idempotent: the agent replies, then asks PID 1 to kill all
//     processes, sync and reboot, which makes the VMM exit (the guest kernel
//     runs with reboot=t panic=-1 and QEMU with -no-reboot). A reply may be
//     lost if power-off wins the race; watch the VMM process for the exit.
//   - Services: start is not idempotent; a second start of a name whose
//     process still runs is already_exists ("stop it first or pick another
//     name"), one whose process ended replaces the old record. Start waits
//     for readiness (up to ready_timeout_ms); if the probe never passes or
//     the process exits first, the agent stops the service (state failed)
//     and answers failed_precondition with the probe's last error and the
//     last 20 log lines. If the start request ends early (client gone), the
//     service is stopped too, so a retry starts clean. Concurrent starts of
//     one name: one wins, the others get already_exists. Stop and reset are
//     idempotent (stop: SIGTERM to the process group, SIGKILL after 5 s;
//     stopping an ended service keeps its state). Status, list and logs are
//     read-only. Each service runs in its own process group with stdin
//     /dev/null and stdout+stderr merged into a 1 MiB in-memory log.
//   - Shells: each open starts a new shell on a new PTY (id: 12 hex chars).
//     Output is kept in a bounded buffer addressed by absolute cursors that
//     count BYTES of terminal output since the shell opened. A reader that
//     passes each reply's next_cursor back sees every byte exactly once;
//     if it falls behind the buffer, the reply's dropped range says what was
//     lost and output resumes at the buffer start. Reads are read-only and
//     may run concurrently (wait_ms long-polls for new output). Writes are
//     not idempotent (a retry types the input twice); concurrent writes to
//     one shell are serialized. Signal goes to the terminal's foreground
//     process group. Close kills every process in the shell's session;
//     afterwards (and for an unknown id) every call on that id is
//     not_found. A shell whose process exited stays readable (state
//     exited) until closed; writes and signals to it are
//     failed_precondition.
//
// # Secrets
//
// After each boot of a workspace guest the host sends the workspace's
// secrets (SetSecrets; it replaces the set). From then on the agent
// replaces every value, and its base64, hex, URL and JSON encoded forms,
// with "[REDACTED]" before anything leaves the guest: exec events and
// results (one redacting stream per output stream, so a value split across
// chunks is caught; a held-back tail is emitted at the end), service logs
// and shell output (redacted as they enter the buffer, so shell cursors
// count bytes of the redacted output; up to the longest pattern's length
// minus one trailing bytes that could still start a value are held back
// until more output arrives or the output ends), service status fields and
// error messages. secret_env in exec, service start and shell open
// requests names secrets (SECRET -> VAR, "" meaning the same name) that
// the agent resolves for that one process; an unknown name is not_found.
// Output a command printed before SetSecrets is not redacted retroactively.
//
// # Errors
//
// Request errors are HTTP 4xx/5xx with an ErrorResponse body whose category is
// an errdefs wire name (invalid_argument, not_found, unavailable, ...) and
// whose status is that category's (errdefs.HTTPStatus); the hint travels in
// its own field. See errors.go.
// A command that fails is not an error: it is an ExecResult with its exit code
// (127 when the command is not found, 126 when it cannot be executed, 124 on
// timeout, 128+n when killed by signal n).
package agentapi

import "time"

// PortName is the virtio-serial port name the guest agent serves on.
const PortName = "org.pyro.agent"

// Paths of the agent API.
const (
	PathHealth   = "/v1/health"
	PathExec     = "/v1/exec"
	PathShutdown = "/v1/shutdown"
	// Files: see the package doc.
	PathFilesPush = "/v1/files/push"
	PathFilesPull = "/v1/files/pull"
	// PathFilesPushDisk (POST ?dest=&within=&length=N) extracts the tar
	// the host wrote at the start of the transfer disk (see PushDisk).
	PathFilesPushDisk = "/v1/files/push-disk"
	// A layered /workspace: the entries its upper layer changed (GET,
	// ?side=SideLower|SideMerged, a tar), and the upper disk's freeze and
	// thaw (POST, freeze takes ?ms=N, the longest it may last).
	PathLayerChanges = "/v1/layers/changes"
	PathLayerFreeze  = "/v1/layers/freeze"
	PathLayerThaw    = "/v1/layers/thaw"
	// PathLayerManifest (GET) lists the upper layer's entries
	// (LayerManifest).
	PathLayerManifest = "/v1/layers/manifest"

	// Services: PathServices (GET list, POST start), PathServices+"/NAME"
	// (GET), +"/NAME/logs" (GET), +"/NAME/stop" (POST).
	PathServices      = "/v1/services"
	PathServicesReset = "/v1/services/reset"
	// Shells: PathShells (GET list, POST open), PathShells+"/ID/read"
	// (GET), +"/ID/write", +"/ID/signal", +"/ID/resize", +"/ID/close"
	// (POST).
	PathShells      = "/v1/shells"
	PathShellsReset = "/v1/shells/reset"
)

// StreamWindow is the yamux per-stream receive window on both sides. The
// default 256 KiB caps a bulk transfer (push, pull) at one window per round
// trip; 8 MiB keeps the channel busy.
const StreamWindow = 8 << 20

// DefaultMaxOutputBytes is the per-stream capture limit when an ExecRequest
// leaves MaxOutputBytes at 0.
const DefaultMaxOutputBytes = 1 << 20

// Exit codes the agent sets itself.
const (
	ExitTimedOut      = 124
	ExitCannotExecute = 126
	ExitNotFound      = 127
)

// Health describes the running guest.
type Health struct {
	AgentVersion  string `json:"agent_version"`
	KernelRelease string `json:"kernel_release"`
	VCPUs         int    `json:"vcpus"`
	MemTotalKiB   int64  `json:"mem_total_kib"`
	UptimeMS      int64  `json:"uptime_ms"`
	// Boot milestones, in milliseconds since the guest kernel started
	// (CLOCK_BOOTTIME). Zero when unknown (e.g. host-compat).
	InitStartedMS  int64 `json:"init_started_ms,omitempty"`
	RootReadyMS    int64 `json:"root_ready_ms,omitempty"`
	AgentStartedMS int64 `json:"agent_started_ms,omitempty"`
	// FirstInherited: the agent answers a fork's question (Inherited) in
	// a first-call frame (first_inherited.go), so a host forking this
	// guest may send it there; false from an older agent.
	FirstInherited bool `json:"first_inherited,omitempty"`
}

// ExecRequest runs one command. Exactly one of Argv and Shell is set.
type ExecRequest struct {
	// Argv is executed directly; Argv[0] is looked up in the guest's PATH
	// (the merged environment's PATH) unless it contains a slash.
	Argv []string `json:"argv,omitempty"`
	// Shell is run with /bin/sh -c.
	Shell string `json:"shell,omitempty"`
	// Env is merged over the default environment (PATH, HOME, LANG, TERM).
	Env map[string]string `json:"env,omitempty"`
	// Cwd is the working directory, default "/". It must exist.
	Cwd string `json:"cwd,omitempty"`
	// TimeoutMS kills the process group after this long; 0 means no timeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// MaxOutputBytes caps what is captured and forwarded per stream; 0 means
	// DefaultMaxOutputBytes. Output beyond it is drained and dropped, and the
	// result is marked truncated.
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"`
	// SecretEnv maps secret names (set with /v1/secrets) to environment
	// variable names for this call only; "" means the secret's own name.
	// The agent resolves it, so values never travel in requests.
	SecretEnv map[string]string `json:"secret_env,omitempty"`
	// Timings asks for ExecResult.Timings.
	Timings bool `json:"timings,omitempty"`
}

// ExecResult is the outcome of one command. On the wire (the exit event)
// Stdout and Stderr are empty: the output came in the events before it.
type ExecResult struct {
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	TimedOut        bool   `json:"timed_out"`
	// Signal names the signal that ended the process ("SIGKILL"), if any.
	Signal     string    `json:"signal,omitempty"`
	PID        int       `json:"pid,omitempty"`
	DurationMS int64     `json:"duration_ms"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Timings, when the request asked, are the agent's phases of the
	// call on the guest's clock ("prepare=80 headers=60 ... wait=900",
	// microseconds each): for debug logs, never parsed.
	Timings string `json:"timings,omitempty"`
}

// Event types in the exec response stream.
const (
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
)

// Event is one line of the exec response stream.
type Event struct {
	Type string `json:"type"`
	// Stream and Elided are set on an elided event (see EventElided).
	Stream string `json:"stream,omitempty"`
	Elided int64  `json:"elided,omitempty"`
	// Data holds raw output bytes (base64 in JSON) for stdout/stderr events.
	Data []byte `json:"data,omitempty"`
	// Result is set on the exit event.
	Result *ExecResult `json:"result,omitempty"`
	// Error is set on an error event (the agent failed mid-stream).
	Error *ErrorResponse `json:"error,omitempty"`
}

// ShutdownResponse acknowledges a shutdown request.
type ShutdownResponse struct {
	OK bool `json:"ok"`
}
