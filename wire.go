package pyro

import (
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/doctor"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// The SDK owns its public types: none of them is an alias or an embed of
// an internal wire type (agentapi, workspace, doctor), so the wire can
// change without changing the SDK's API. This file is the one boundary
// where internal values become public ones. JSON names are those of the
// contract (the CLI prints these structs with --json);
// TestPublicTypesCoverWire checks that no wire field is forgotten here.

// WorkspaceSeed describes how /workspace was initialised.
type WorkspaceSeed struct {
	Mode       string `json:"mode"` // "empty", "directory" or "archive"
	SourcePath string `json:"source_path,omitempty"`
	FileCount  int    `json:"file_count"`
	Bytes      int64  `json:"bytes"`
	// OriginKind is "project_path", "manual_seed_path" or "empty";
	// OriginRef is the project or seed path (workspace_project.go).
	OriginKind string `json:"origin_kind"`
	OriginRef  string `json:"origin_ref,omitempty"`
}

func seedFrom(s workspace.Seed) WorkspaceSeed {
	return WorkspaceSeed{Mode: s.Mode, SourcePath: s.SourcePath, FileCount: s.FileCount, Bytes: s.Bytes,
		OriginKind: originKind(s), OriginRef: s.OriginRef}
}

// Snapshot is one stored /workspace checkpoint.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	Implicit  bool      `json:"implicit"` // the baseline
	// Format is how the snapshot is stored: "" (a tar of /workspace),
	// "upper" (a copy of a layered workspace's upper layer) or "base"
	// (a layered workspace's baseline image).
	Format string `json:"format,omitempty"`
}

// snapshotFrom, historyFrom and the Readiness pair are plain conversions:
// the SDK types mirror the internal ones field for field, so a field added
// on one side and not the other stops the build instead of being dropped.
func snapshotFrom(s workspace.Snapshot) Snapshot { return Snapshot(s) }

// HistoryEntry is one command of a workspace's history.
type HistoryEntry struct {
	Seq             int       `json:"seq"` // 1-based position in the history
	Command         []string  `json:"command"`
	ExitCode        int       `json:"exit_code"`
	DurationMS      int64     `json:"duration_ms"`
	StartedAt       time.Time `json:"started_at"`
	TimedOut        bool      `json:"timed_out,omitempty"`
	Stdout          string    `json:"stdout"`
	Stderr          string    `json:"stderr"`
	OutputTruncated bool      `json:"output_truncated,omitempty"`
	// NetworkDenials: what the network policy refused during the command.
	NetworkDenials []NetworkDenial `json:"network_denials,omitempty"`
}

// historyFrom converts field by field: NetworkDenials differ in element type
// (the public NetworkDenial mirrors netpolicy.Denial).
func historyFrom(h workspace.HistoryEntry) HistoryEntry {
	ds := h.NetworkDenials
	out := HistoryEntry{Seq: h.Seq, Command: h.Command, ExitCode: h.ExitCode, DurationMS: h.DurationMS, StartedAt: h.StartedAt,
		TimedOut: h.TimedOut, Stdout: h.Stdout, Stderr: h.Stderr, OutputTruncated: h.OutputTruncated}
	if len(ds) > 0 {
		out.NetworkDenials = denialsFrom(ds)
	}
	return out
}

// DiffChange is one changed path of a WorkspaceDiff.
type DiffChange struct {
	Path   string `json:"path"`   // relative to /workspace
	Status string `json:"status"` // "added", "modified" or "deleted"
	Kind   string `json:"kind"`   // "file", "dir" or "symlink"
	Binary bool   `json:"binary,omitempty"`
	// Diff is a unified diff for text files ("" for binary files, dirs,
	// and text files over the size limit: then Note says so).
	Diff string `json:"diff,omitempty"`
	Note string `json:"note,omitempty"`
}

// WorkspaceDiff compares /workspace with the baseline.
type WorkspaceDiff struct {
	WorkspaceID string       `json:"workspace_id"`
	Added       []string     `json:"added"`
	Modified    []string     `json:"modified"`
	Deleted     []string     `json:"deleted"`
	Changes     []DiffChange `json:"changes"`
}

func diffFrom(id string, d workspace.DiffResult) WorkspaceDiff {
	out := WorkspaceDiff{WorkspaceID: id, Added: nonNil(d.Added), Modified: nonNil(d.Modified), Deleted: nonNil(d.Deleted),
		Changes: make([]DiffChange, 0, len(d.Changes))}
	for _, c := range d.Changes {
		out.Changes = append(out.Changes, DiffChange(c))
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Readiness is a service's readiness probe: Type "file" (Path exists),
// "tcp" (Address "host:port" accepts), "http" (URL answers 2xx/3xx, or
// ExpectStatus) or "command" (a shell Command exits 0).
type Readiness struct {
	Type         string `json:"type"`
	Path         string `json:"path,omitempty"`
	Address      string `json:"address,omitempty"`
	URL          string `json:"url,omitempty"`
	ExpectStatus int    `json:"expect_status,omitempty"`
	Command      string `json:"command,omitempty"`
}

func (r *Readiness) wire() *agentapi.ServiceReadiness {
	if r == nil {
		return nil
	}
	w := agentapi.ServiceReadiness(*r)
	return &w
}

func readinessFrom(r *agentapi.ServiceReadiness) *Readiness {
	if r == nil {
		return nil
	}
	w := Readiness(*r)
	return &w
}

// Service is a service's status: state (starting, running, ready, exited,
// failed, stopped), pid, exit code, times.
type Service struct {
	WorkspaceID string `json:"workspace_id"`
	Name        string `json:"name"`
	State       string `json:"state"`
	// Argv is the command as run (a shell command is /bin/sh -c CMD).
	Argv      []string   `json:"argv"`
	Cwd       string     `json:"cwd"`
	Readiness *Readiness `json:"readiness,omitempty"`
	// PID is the service's process (also its process group id).
	PID int `json:"pid"`
	// ExitCode is set once the process has ended (128+n when killed by
	// signal n); Signal names that signal.
	ExitCode       *int       `json:"exit_code,omitempty"`
	Signal         string     `json:"signal,omitempty"`
	StartedAt      time.Time  `json:"started_at"`
	ReadyAt        *time.Time `json:"ready_at,omitempty"`
	StoppedAt      *time.Time `json:"stopped_at,omitempty"`
	RestartCount   int        `json:"restart_count"`
	LastProbeError string     `json:"last_probe_error,omitempty"`
	// Error says why the service failed to become ready, if it did.
	Error string `json:"error,omitempty"`
	// PublishedPorts are the host loopback ports forwarded to it.
	PublishedPorts []PublishedPort `json:"published_ports"`
}

// Active reports whether the service's process is (still) running.
func (s Service) Active() bool {
	return agentapi.ServiceStatus{State: s.State}.Active()
}

func serviceFrom(id string, s agentapi.ServiceStatus) Service {
	return Service{WorkspaceID: id, Name: s.Name, State: s.State, Argv: s.Argv, Cwd: s.Cwd, Readiness: readinessFrom(s.Readiness),
		PID: s.PID, ExitCode: s.ExitCode, Signal: s.Signal, StartedAt: s.StartedAt, ReadyAt: s.ReadyAt, StoppedAt: s.StoppedAt,
		RestartCount: s.RestartCount, LastProbeError: s.LastProbeError, Error: s.Error, PublishedPorts: []PublishedPort{}}
}

// ServiceLogs is the tail of a service's merged stdout/stderr.
type ServiceLogs struct {
	WorkspaceID string   `json:"workspace_id"`
	Name        string   `json:"name"`
	Lines       []string `json:"lines"`
	// Truncated: the bounded log dropped early output.
	Truncated bool `json:"truncated"`
	// State of the service when the logs were read.
	State string `json:"state"`
}

func serviceLogsFrom(id string, l agentapi.ServiceLogs) ServiceLogs {
	return ServiceLogs{WorkspaceID: id, Name: l.Name, Lines: l.Lines, Truncated: l.Truncated, State: l.State}
}

// Shell describes an open shell.
type Shell struct {
	WorkspaceID string `json:"workspace_id"`
	ShellID     string `json:"shell_id"`
	// PID is the shell process (a session leader on the PTY).
	PID       int       `json:"pid"`
	Cwd       string    `json:"cwd"`
	Cols      int       `json:"cols"`
	Rows      int       `json:"rows"`
	State     string    `json:"state"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Argv      []string  `json:"argv"`
	StartedAt time.Time `json:"started_at"`
	// EndCursor is the byte offset just past everything printed so far.
	EndCursor int64 `json:"end_cursor"`
}

func shellFrom(id string, s agentapi.ShellInfo) Shell {
	return Shell{WorkspaceID: id, ShellID: s.ShellID, PID: s.PID, Cwd: s.Cwd, Cols: s.Cols, Rows: s.Rows, State: s.State,
		ExitCode: s.ExitCode, Argv: s.Argv, StartedAt: s.StartedAt, EndCursor: s.EndCursor}
}

// ByteRange is a range of shell output, [From, To).
type ByteRange struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// ShellRead is output read from a shell.
type ShellRead struct {
	WorkspaceID string `json:"workspace_id"`
	ShellID     string `json:"shell_id"`
	Output      string `json:"output"`
	// Cursor is where Output starts: the requested cursor, or the buffer
	// start when the requested one was dropped.
	Cursor     int64 `json:"cursor"`
	NextCursor int64 `json:"next_cursor"`
	// Dropped is the requested range the bounded buffer no longer holds.
	Dropped *ByteRange `json:"dropped,omitempty"`
	// More: output past NextCursor was already available.
	More     bool   `json:"more"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

func shellReadFrom(id string, r agentapi.ShellReadResponse) ShellRead {
	out := ShellRead{WorkspaceID: id, ShellID: r.ShellID, Output: r.Output, Cursor: r.Cursor, NextCursor: r.NextCursor,
		More: r.More, State: r.State, ExitCode: r.ExitCode}
	if r.Dropped != nil {
		out.Dropped = &ByteRange{From: r.Dropped.From, To: r.Dropped.To}
	}
	return out
}

// ShellWrite acknowledges input.
type ShellWrite struct {
	WorkspaceID  string `json:"workspace_id"`
	ShellID      string `json:"shell_id"`
	BytesWritten int    `json:"bytes_written"`
}

// ShellSignal says which signal went to which process group.
type ShellSignal struct {
	WorkspaceID string `json:"workspace_id"`
	ShellID     string `json:"shell_id"`
	Signal      string `json:"signal"`
	PGID        int    `json:"pgid"`
}

// DoctorCheck is one check of a DoctorReport.
type DoctorCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// DoctorReport is the result of Doctor.
type DoctorReport struct {
	OK     bool          `json:"ok"`
	Checks []DoctorCheck `json:"checks"`
}

func doctorFrom(r doctor.Report) DoctorReport {
	out := DoctorReport{OK: r.OK, Checks: make([]DoctorCheck, 0, len(r.Checks))}
	for _, c := range r.Checks {
		out.Checks = append(out.Checks, DoctorCheck(c))
	}
	return out
}

// execResultFrom is the one conversion of an agent's exec result.
func execResultFrom(r agentapi.ExecResult) ExecResult {
	return ExecResult{
		ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr,
		StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated,
		TimedOut: r.TimedOut, Signal: r.Signal, DurationMS: r.DurationMS,
		NetworkDenials: []NetworkDenial{},
	}
}

// EnvironmentManifest is an installed environment's manifest: package
// list, kernel, file sizes and sha256 digests, build source.
type EnvironmentManifest struct {
	Name           string                     `json:"name"`
	Version        string                     `json:"version"`
	Description    string                     `json:"description"`
	Packages       []string                   `json:"packages"`
	Kernel         EnvironmentKernel          `json:"kernel"`
	Files          map[string]EnvironmentFile `json:"files"`
	Modules        []string                   `json:"modules"`
	BuiltinModules []string                   `json:"builtin_modules"`
	Source         string                     `json:"source"`
	BuildTool      string                     `json:"build_tool"`
	Mirror         string                     `json:"mirror"`
	BuiltAt        time.Time                  `json:"built_at"`
	TotalBytes     int64                      `json:"total_bytes"`
	Digest         string                     `json:"digest"`
	Image          *EnvironmentImage          `json:"image,omitempty"` // set when converted from an OCI image
}

// EnvironmentKernel names the Debian kernel package of an environment.
type EnvironmentKernel struct {
	Package string `json:"package"`
	Version string `json:"version"`
	Release string `json:"release"`
}

// EnvironmentFile is the size and digest of one file of an environment.
type EnvironmentFile struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func manifestFrom(m *envstore.Manifest) *EnvironmentManifest {
	if m == nil {
		return nil
	}
	out := &EnvironmentManifest{Name: m.Name, Version: m.Version, Description: m.Description, Packages: m.Packages,
		Kernel:  EnvironmentKernel{Package: m.Kernel.Package, Version: m.Kernel.Version, Release: m.Kernel.Release},
		Modules: m.Modules, BuiltinModules: m.BuiltinModules, Source: m.Source, BuildTool: m.BuildTool, Mirror: m.Mirror,
		BuiltAt: m.BuiltAt, TotalBytes: m.TotalBytes, Digest: m.Digest, Image: imageFrom(m.Image)}
	if m.Files != nil {
		out.Files = make(map[string]EnvironmentFile, len(m.Files))
		for k, f := range m.Files {
			out.Files[k] = EnvironmentFile{Size: f.Size, SHA256: f.SHA256}
		}
	}
	return out
}

// PullProgress reports one step of a pull: Phase names the step; Done and
// Total count bytes (or items) when known, else both are 0.
type PullProgress struct {
	Phase   string `json:"phase"`
	Message string `json:"message"`
	Done    int64  `json:"done"`
	Total   int64  `json:"total"`
}

func progressTo(f func(PullProgress)) func(envstore.Event) {
	if f == nil {
		return nil
	}
	return func(e envstore.Event) {
		f(PullProgress(e))
	}
}

// PruneResult lists what PruneEnvironments removed.
type PruneResult struct {
	Removed    []PrunedItem `json:"removed"`
	FreedBytes int64        `json:"freed_bytes"`
}

// PrunedItem is one directory PruneEnvironments removed.
type PrunedItem struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
	Bytes  int64  `json:"bytes"`
}

func pruneFrom(r envstore.PruneResult) PruneResult {
	out := PruneResult{Removed: make([]PrunedItem, 0, len(r.Removed)), FreedBytes: r.FreedBytes}
	for _, it := range r.Removed {
		out.Removed = append(out.Removed, PrunedItem(it))
	}
	return out
}
