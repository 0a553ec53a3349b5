package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// A workspace is a long-lived VM with a persistent /workspace: its own
// disk image on the host, so a crash of the VMM or supervisor loses nothing
// an exec finished writing; the next command restarts the VM on the same
// disk. The create-time content of /workspace is kept as the immutable
// "baseline" snapshot, against which diff compares and to which reset
// returns by default.

// CreateWorkspaceOptions describe a workspace. Zero values take the
// contract defaults (debian:12, 1 vCPU, 1024 MiB, no network).
type CreateWorkspaceOptions struct {
	Environment string
	VCPUCount   int
	MemMiB      int
	// Network, NetworkPolicy and AllowHosts as in CreateVMOptions.
	Network         bool
	NetworkPolicy   string
	AllowHosts      []string
	AllowHostCompat bool
	// SeedPath is a host directory or a local .tar/.tar.gz/.tgz whose
	// content fills /workspace before CreateWorkspace returns.
	SeedPath string
	// ProjectPath seeds /workspace with the git-tracked files of the
	// checkout containing this directory (workspace_project.go); not
	// together with SeedPath.
	ProjectPath string
	// Secrets are guest-only values, materialised under /run/pyro-secrets.
	Secrets []Secret
	// Name, optional, is usable wherever the id is; it is unique among
	// existing workspaces (ValidateWorkspaceName).
	Name string
	// Labels are free KEY=VALUE tags (ValidateLabels), to filter
	// ListWorkspaces by.
	Labels map[string]string
	// Checkpoints takes a checkpoint of /workspace before every command,
	// push, file write, patch and service start, for UndoWorkspace and
	// DiffWorkspaceSince (not with AllowHostCompat: that layout has no
	// layers).
	Checkpoints bool
}

// Workspace is a workspace's record and observed status.
type Workspace struct {
	WorkspaceID   string   `json:"workspace_id"`
	Environment   string   `json:"environment"`
	State         string   `json:"state"`
	ReasonKind    string   `json:"reason_kind,omitempty"`
	Reason        string   `json:"reason,omitempty"`
	VCPUCount     int      `json:"vcpu_count"`
	MemMiB        int      `json:"mem_mib"`
	Network       bool     `json:"network"`
	NetworkPolicy string   `json:"network_policy"`
	AllowHosts    []string `json:"allow_hosts"`
	// NetworkDenials: what the policy refused since the last command or
	// status call (running workspaces with a network only).
	NetworkDenials      []NetworkDenial `json:"network_denials"`
	AllowHostCompat     bool            `json:"allow_host_compat"`
	CreatedAt           time.Time       `json:"created_at"`
	WorkspaceSeed       WorkspaceSeed   `json:"workspace_seed"`
	ResetCount          int             `json:"reset_count"`
	LastResetAt         *time.Time      `json:"last_reset_at"`
	Secrets             []SecretInfo    `json:"secrets"`
	ServiceCount        int             `json:"service_count"`
	RunningServiceCount int             `json:"running_service_count"`
	CommandCount        int             `json:"command_count"`
	// Jobs are the background jobs since the last reset (workspace_jobs.go).
	Jobs         []WorkspaceJob `json:"jobs,omitempty"`
	Checkpoints  bool           `json:"checkpoints"`
	Backend      string         `json:"backend,omitempty"`
	Acceleration string         `json:"acceleration,omitempty"`
	Isolation    string         `json:"isolation,omitempty"`
	// Start is "warm" (restored from a memory snapshot), "cold", or
	// "pool" (handed out by a workspace pool: BootMS is the hand-out);
	// BootMS is how long the current guest took to come up.
	Start  string `json:"start,omitempty"`
	BootMS int64  `json:"boot_ms,omitempty"`

	// Naming and discovery (workspace_names.go).
	Name           string            `json:"name"`
	Labels         map[string]string `json:"labels"`
	LastActivityAt time.Time         `json:"last_activity_at"`

	// EnvironmentDigest: see VM.EnvironmentDigest.
	EnvironmentDigest string `json:"environment_digest,omitempty"`
}

// workspaceMeta is the workspace part of the instance record.
type workspaceMeta struct {
	Seed        workspace.Seed `json:"workspace_seed"`
	ResetCount  int            `json:"reset_count"`
	LastResetAt *time.Time     `json:"last_reset_at,omitempty"`
	Secrets     []SecretInfo   `json:"secrets"`

	Name   string            `json:"name,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`

	Checkpoints bool `json:"checkpoints,omitempty"`
}

func metaOf(rec instance.Record) workspaceMeta {
	m := workspaceMeta{Secrets: []SecretInfo{}}
	if len(rec.Extra) > 0 {
		_ = json.Unmarshal(rec.Extra, &m)
	}
	if m.Secrets == nil {
		m.Secrets = []SecretInfo{}
	}
	return m
}

func setMeta(rec *instance.Record, m workspaceMeta) {
	rec.Extra, _ = json.Marshal(m)
}

// wsDir returns an existing workspace's directory and record; id may be
// the workspace's name (the one place names resolve). Results should carry
// rec.ID, not the name.
func (c *Client) wsDir(id string) (vmdir.Dir, instance.Record, error) {
	return c.resolveWorkspace(id)
}

func snapshotsOf(dir vmdir.Dir) workspace.Snapshots {
	return workspace.Snapshots{Dir: dir.Path(workspace.SnapshotsDir)}
}

// CreateWorkspace creates and starts a workspace, seeds /workspace from
// SeedPath when given, and records the baseline snapshot. On failure
// nothing is left behind.
func (c *Client) CreateWorkspace(ctx context.Context, opts CreateWorkspaceOptions) (ws Workspace, err error) {
	vo := CreateVMOptions{Environment: opts.Environment, VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB, Network: opts.Network,
		NetworkPolicy: opts.NetworkPolicy, AllowHosts: opts.AllowHosts, AllowHostCompat: opts.AllowHostCompat}
	vo.applyDefaults()
	rec, err := newRecord("workspace", vo)
	if err != nil {
		return ws, err
	}
	secretInfo, secretValues, err := checkSecrets(opts.Secrets)
	if err != nil {
		return ws, err
	}
	var source io.ReadCloser
	seed := workspace.Seed{Mode: "empty"}
	if opts.SeedPath != "" {
		if source, seed.Mode, err = workspace.OpenSource(opts.SeedPath); err != nil {
			return ws, err
		}
		defer source.Close()
		seed.SourcePath, _ = filepath.Abs(opts.SeedPath)
		seed.OriginKind, seed.OriginRef = OriginManualSeedPath, seed.SourcePath
	}
	if opts.ProjectPath != "" {
		if source, err = projectSeed(ctx, opts, &seed); err != nil {
			return ws, err
		}
		defer source.Close()
	}
	if rec.EnvironmentDigest, err = c.ensureEnvironment(ctx, rec.Environment); err != nil {
		return ws, err
	}
	// A workspace pool of this configuration hands out a ready one
	// (workspace_pool.go); without one the create starts its own.
	if ws, ok, err := c.createPooled(ctx, opts, rec); ok {
		return ws, err
	}
	releaseName, err := c.claimName(ctx, opts.Name, opts.Labels)
	if err != nil {
		return ws, err
	}
	var base baseDigest
	var seedSrc io.Reader // a baseline's seed, built while the guest starts
	dir, rec, err := c.lc.Create(ctx, rec, func(dir vmdir.Dir, rec *instance.Record) error {
		// Half-made until the baseline is recorded. Layered unless
		// host-compat may run it (that backend mounts one disk): the
		// seed becomes the baseline image here, on the host.
		if base, err = c.setUpWorkspaceDir(ctx, dir, rec, !opts.AllowHostCompat, source != nil); err != nil {
			return err
		}
		if !opts.AllowHostCompat && source != nil {
			seedSrc, source = source, nil
		}
		if err := saveSecrets(dir, secretValues); err != nil {
			return err
		}
		setMeta(rec, workspaceMeta{Seed: seed, Secrets: secretInfo, Name: opts.Name, Labels: opts.Labels, Checkpoints: opts.Checkpoints && !opts.AllowHostCompat})
		return nil
	})
	releaseName() // the record holding the name is saved (or nothing is)
	if err != nil {
		return ws, err
	}
	defer func() {
		if err != nil {
			_, _ = c.lc.Delete(context.WithoutCancel(ctx), dir, rec)
		}
	}()
	// Start runs prepareGuest (secrets) before anything else reaches the guest.
	var started lifecycle.Status
	if build := startSeedBuild(ctx, rec.WorkspaceBase, seedSrc); build != nil {
		started, err = c.lc.Start(build.startCtx, dir, rec)
		if base, err = build.finish(ctx, c, dir, seed, err); err != nil {
			return ws, err
		}
	} else if started, err = c.lc.Start(ctx, dir, rec); err != nil {
		return ws, err
	}
	agent := c.lc.Client(dir)
	defer agent.Close()
	if source != nil {
		r, err := agent.PushTar(ctx, workspace.Root, workspace.Root, source)
		if err != nil {
			return ws, fmt.Errorf("seed /workspace: %w", err)
		}
		seed.FileCount, seed.Bytes = r.Files, r.Bytes
		err = c.lc.Update(ctx, dir, instance.KindWorkspace, func(r *instance.Record) error {
			m := metaOf(*r)
			m.Seed = seed
			setMeta(r, m)
			return nil
		})
		if err != nil {
			return ws, err
		}
	}
	if layered(rec) {
		if err := base.record(dir); err != nil {
			return ws, fmt.Errorf("record baseline: %w", err)
		}
	} else if _, err := c.snapshot(ctx, dir, agent, workspace.Baseline); err != nil {
		return ws, fmt.Errorf("record baseline: %w", err)
	}
	if err := instance.DoneCreating(dir); err != nil {
		return ws, err
	}
	// Just created: it runs no service and no job yet, so the guest is
	// not asked (in a freshly restored TCG guest each agent handler's
	// first call is code translated anew), and its state is what its
	// start observed a moment ago (the agent's answer that ended the
	// boot), not a second health round trip. The record is read again:
	// the seed's counts and the baseline were recorded in it since.
	dir, rec, err = c.wsDir(rec.ID)
	if err != nil {
		return ws, err
	}
	return c.workspaceStatus(ctx, dir, rec, started, &agentapi.Inherited{}), nil
}

// snapshot stores the current /workspace as snapshot name.
func (c *Client) snapshot(ctx context.Context, dir vmdir.Dir, agent *agentapi.Client, name string) (Snapshot, error) {
	r, _, err := agent.PullTar(ctx, workspace.Root, workspace.Root)
	if err != nil {
		return Snapshot{}, err
	}
	defer r.Close()
	snap, err := snapshotsOf(dir).Save(name, r)
	return snapshotFrom(snap), err
}

// workspaceAgent returns an agent client for a workspace, restarting its VM
// on the same /workspace disk when it is not running (after a crash, a
// host reboot, a stop) or no longer answering. An expired workspace is not
// restarted.
func (c *Client) workspaceAgent(ctx context.Context, dir vmdir.Dir, rec instance.Record) (*agentapi.Client, error) {
	touchActivity(dir)
	return c.lc.EnsureRunning(ctx, dir, rec)
}

// StatusWorkspace returns a workspace's observed status.
func (c *Client) StatusWorkspace(ctx context.Context, id string) (Workspace, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	return c.workspaceStatus(ctx, dir, rec, c.lc.Observe(ctx, dir, rec), nil), nil
}

// workspaceStatus is the workspace rec in dir observed as st. Of a
// running one it asks the agent for its services and jobs, unless in
// names them (what a fork runs as it starts, workspace_fork.go).
func (c *Client) workspaceStatus(ctx context.Context, dir vmdir.Dir, rec instance.Record, st lifecycle.Status, in *agentapi.Inherited) Workspace {
	m := metaOf(rec)
	hist, _ := workspace.ReadHistory(dir.Path(workspace.HistoryFile))
	ws := Workspace{
		WorkspaceID: rec.ID, Environment: rec.Environment, EnvironmentDigest: rec.EnvironmentDigest, State: st.State, ReasonKind: string(st.Cause), Reason: st.Reason,
		VCPUCount: rec.VCPUCount, MemMiB: rec.MemMiB, Network: rec.Network, AllowHostCompat: rec.AllowHostCompat,
		CreatedAt: rec.CreatedAt, WorkspaceSeed: seedFrom(m.Seed), ResetCount: m.ResetCount, LastResetAt: m.LastResetAt,
		Secrets: m.Secrets, CommandCount: len(hist), Checkpoints: checkpointsOn(rec),
		Backend: st.Backend, Acceleration: st.Acceleration, Isolation: st.Isolation, Start: st.Start, BootMS: st.BootMS,
	}
	statusNames(&ws, dir, rec, m)
	ws.NetworkPolicy, ws.AllowHosts = policyFields(rec)
	ws.NetworkDenials = []NetworkDenial{}
	if st.State == instance.Running {
		ws.NetworkDenials = takeDenials(ctx, dir, rec)
		if in != nil {
			ws.ServiceCount, ws.RunningServiceCount = countServices(in.Services)
			ws.Jobs = jobsFrom(in.Jobs)
			return ws
		}
		agent := c.lc.Client(dir)
		defer agent.Close()
		ws.ServiceCount, ws.RunningServiceCount = serviceCounts(ctx, agent)
		ws.Jobs = workspaceJobs(ctx, agent)
	}
	return ws
}

// ExecWorkspace runs one command in /workspace and leaves the workspace
// running; the command goes into the workspace's history.
func (c *Client) ExecWorkspace(ctx context.Context, id string, opts ExecOptions) (ExecResult, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return ExecResult{}, err
	}
	id = rec.ID
	if opts.Cwd == "" {
		opts.Cwd = workspace.Root
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return ExecResult{}, err
	}
	started := time.Now().UTC()
	res, err := c.execCheckpointed(ctx, dir, rec, agent, opts)
	res.WorkspaceID = id
	res.NetworkDenials = takeDenials(ctx, dir, rec)
	// The agent redacted the output; the command line is the caller's and
	// may hold a value too: history and errors get the host's redaction.
	red := instance.Redactor(dir)
	if err != nil {
		return res, red.Error(err)
	}
	_ = workspace.AppendHistory(dir.Path(workspace.HistoryFile), workspace.HistoryEntry{
		Command: red.Strings(opts.Command), ExitCode: res.ExitCode, DurationMS: res.DurationMS, StartedAt: started,
		TimedOut: res.TimedOut, Stdout: res.Stdout, Stderr: res.Stderr, OutputTruncated: res.StdoutTruncated || res.StderrTruncated,
		NetworkDenials: denialsTo(res.NetworkDenials),
	})
	return res, nil
}

// SyncResult says what a push imported.
type SyncResult struct {
	WorkspaceID string `json:"workspace_id"`
	SourcePath  string `json:"source_path"`
	Mode        string `json:"mode"` // "directory" or "archive"
	Dest        string `json:"dest"`
	FileCount   int    `json:"file_count"`
	Bytes       int64  `json:"bytes"`
	// Transfer says which path carried it: "host" (written into a
	// stopped workspace's upper layer on the host), "disk" (written by the
	// host to the workspace's transfer disk, copied by the guest with
	// direct I/O) or "guest" (streamed through the guest agent).
	Transfer string `json:"transfer"`
}

// PushWorkspaceSync imports a host directory or archive into the workspace
// at dest (default /workspace; it must be under /workspace).
func (c *Client) PushWorkspaceSync(ctx context.Context, id, sourcePath, dest string) (SyncResult, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return SyncResult{}, err
	}
	id = rec.ID
	dest, err = workspace.GuestPath(dest)
	if err != nil {
		return SyncResult{}, err
	}
	src, mode, err := workspace.OpenSource(sourcePath)
	if err != nil {
		return SyncResult{}, err
	}
	defer src.Close()
	if res, ok, err := c.pushHost(ctx, dir, rec, sourcePath, mode, dest); ok { // workspace_hostpush.go
		return res, err
	}
	if res, ok, err := c.pushHostRunning(ctx, dir, rec, sourcePath, mode, dest); ok { // workspace_hostpush_running.go
		return res, err
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return SyncResult{}, err
	}
	defer agent.Close()
	if err := c.checkpoint(ctx, dir, rec, agent, "sync push "+sourcePath+" "+dest); err != nil {
		return SyncResult{}, err
	}
	r, transfer, err := pushTar(ctx, dir, rec, agent, dest, src) // workspace_push.go
	if err != nil {
		return SyncResult{}, err
	}
	abs, _ := filepath.Abs(sourcePath)
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventSync, Path: dest, Target: abs, Count: r.Files, Bytes: r.Bytes})
	return SyncResult{WorkspaceID: id, SourcePath: abs, Mode: mode, Dest: dest, FileCount: r.Files, Bytes: r.Bytes, Transfer: transfer}, nil
}

// ExportResult says what an export wrote.
type ExportResult struct {
	WorkspaceID string `json:"workspace_id"`
	Path        string `json:"path"`
	OutputPath  string `json:"output_path"`
	Kind        string `json:"kind"` // "file" or "dir"
	FileCount   int    `json:"file_count"`
	Bytes       int64  `json:"bytes"`
	// Skipped lists entries the export did not write (at most 100):
	// symlinks that are absolute or lead out of the exported tree,
	// devices, fifos. SkippedCount counts them all.
	Skipped      []ExportSkip `json:"skipped"`
	SkippedCount int          `json:"skipped_count"`
	// Transfer says which path served it: "host" (read from the images
	// on the host) or "guest" (streamed by the guest agent).
	Transfer string `json:"transfer"`
}

// ExportSkip is one entry an export did not write, and why.
type ExportSkip struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// ExportOptions tune ExportWorkspace.
type ExportOptions struct {
	// Overwrite replaces an existing output path (after the export has
	// fully arrived, so a failed export never destroys it).
	Overwrite bool
}

// ExportWorkspace copies one file or directory from /workspace to the
// host path outputPath, which must not exist unless Overwrite is set.
// What the guest sent is normalised (see workspace.Export): no
// setuid/setgid/sticky bits, modes within the umask, no device, and no
// symlink out of the exported tree; a file export is a regular file.
func (c *Client) ExportWorkspace(ctx context.Context, id, path, outputPath string, opts *ExportOptions) (ExportResult, error) {
	var o ExportOptions // nil: the defaults
	if opts != nil {
		o = *opts
	}
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return ExportResult{}, err
	}
	id = rec.ID
	guest, err := workspace.GuestPath(path)
	if err != nil {
		return ExportResult{}, err
	}
	if outputPath == "" {
		return ExportResult{}, errdefs.New(errdefs.ErrInvalidArgument, "pass --output HOST_PATH", "no output path")
	}
	out, _ := filepath.Abs(outputPath)
	if _, err := os.Lstat(out); err == nil && !o.Overwrite {
		return ExportResult{}, errdefs.New(errdefs.ErrAlreadyExists, "choose another path, or pass --overwrite", "output %q exists", out)
	}
	st, kind, onHost, err := c.exportHost(ctx, dir, rec, guest, out, o.Overwrite)
	res := ExportResult{WorkspaceID: id, Path: guest, OutputPath: out, Kind: kind, Skipped: []ExportSkip{}, Transfer: TransferHost}
	if !onHost {
		agent, aerr := c.workspaceAgent(ctx, dir, rec)
		if aerr != nil {
			return ExportResult{}, aerr
		}
		defer agent.Close()
		r, kind, perr := agent.PullTar(ctx, guest, workspace.Root)
		if perr != nil {
			return ExportResult{}, perr
		}
		defer r.Close()
		res.Kind, res.Transfer = kind, TransferGuest
		st, err = workspace.Export(hostres.CapReader(r, hostres.Load().ExportBytes, "export of "+guest, hostres.ExportBytesEnv), guest, kind, out, o.Overwrite)
	}
	res.FileCount, res.Bytes = st.Files, st.Bytes
	for _, s := range st.Skipped {
		res.Skipped = append(res.Skipped, ExportSkip{Path: s.Path, Reason: s.Reason})
	}
	res.SkippedCount = st.SkippedCount
	if err != nil {
		return res, err
	}
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventExport, Path: guest, Target: out, Count: res.FileCount, Bytes: res.Bytes})
	return res, nil
}

// DiffWorkspace compares /workspace with the immutable baseline. It streams
// (see workspace.Diff for its bounds) and redacts the workspace's secrets
// from the result.
func (c *Client) DiffWorkspace(ctx context.Context, id string) (WorkspaceDiff, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	id = rec.ID
	// No honest file is larger than the disk it lives on.
	var maxEntry int64
	if fi, err := os.Stat(rec.WorkspaceDisk); err == nil {
		maxEntry = fi.Size()
	}
	red := instance.Redactor(dir)
	if layered(rec) {
		return c.diffLayeredWorkspace(ctx, dir, rec, workspace.DiffOptions{MaxEntryBytes: maxEntry}) // workspace_diff.go
	}
	base, err := snapshotsOf(dir).Open(workspace.Baseline)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	defer base.Close()
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	defer agent.Close()
	cur, _, err := agent.PullTar(ctx, workspace.Root, workspace.Root)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	defer cur.Close()
	d, err := workspace.Diff(base, cur, workspace.DiffOptions{MaxEntryBytes: maxEntry})
	if err != nil {
		return WorkspaceDiff{}, red.Error(fmt.Errorf("diff /workspace: %w", err))
	}
	d.Redact(red)
	return diffFrom(id, d), nil
}

// CreateSnapshot stores the current /workspace as a named snapshot.
func (c *Client) CreateSnapshot(ctx context.Context, id, name string) (Snapshot, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Snapshot{}, err
	}
	id = rec.ID
	if name == workspace.Baseline {
		return Snapshot{}, errdefs.New(errdefs.ErrInvalidArgument, "pick another name", "%q is the implicit create-time snapshot", name)
	}
	if err := workspace.ValidateSnapshotName(name); err != nil {
		return Snapshot{}, err
	}
	if _, err := snapshotsOf(dir).Get(name); err == nil {
		return Snapshot{}, errdefs.New(errdefs.ErrAlreadyExists, "delete it first or pick another name", "snapshot %q already exists", name)
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return Snapshot{}, err
	}
	defer agent.Close()
	var snap Snapshot
	if layered(rec) {
		snap, err = c.snapshotLayer(ctx, dir, rec, agent, name)
	} else {
		snap, err = c.snapshot(ctx, dir, agent, name)
	}
	if err == nil {
		c.recordEvent(dir, workspace.Event{Kind: workspace.EventSnapshotCreate, Path: name})
	}
	return snap, err
}

// ListSnapshots lists the baseline and the named snapshots.
func (c *Client) ListSnapshots(ctx context.Context, id string) ([]Snapshot, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return nil, err
	}
	id = rec.ID
	list, err := snapshotsOf(dir).List()
	out := make([]Snapshot, 0, len(list))
	for _, s := range list {
		out = append(out, snapshotFrom(s))
	}
	return out, err
}

// DeleteSnapshot deletes a named snapshot; the baseline cannot be deleted.
func (c *Client) DeleteSnapshot(ctx context.Context, id, name string) error {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return err
	}
	id = rec.ID
	if err := snapshotsOf(dir).Delete(name); err != nil {
		return err
	}
	_ = dropUnreferenced(dir, rec) // a layer snapshot's layers (workspace_chain.go)
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventSnapshotDelete, Path: name})
	return nil
}

// ResetWorkspace recreates the whole sandbox (fresh VM, fresh root
// filesystem, fresh /workspace disk) and restores /workspace from the
// snapshot (default "baseline"). Command, shell and service history are
// cleared. The snapshot is verified before anything is destroyed.
func (c *Client) ResetWorkspace(ctx context.Context, id, snapshot string) (Workspace, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	id = rec.ID
	if snapshot == "" {
		snapshot = workspace.Baseline
	}
	if layered(rec) {
		if err := c.resetLayered(ctx, dir, rec, snapshot); err != nil {
			return Workspace{}, err
		}
		c.recordEvent(dir, workspace.Event{Kind: workspace.EventReset, Path: snapshot})
		return c.StatusWorkspace(ctx, id)
	}
	data, err := snapshotsOf(dir).Open(snapshot)
	if err != nil {
		return Workspace{}, err
	}
	defer data.Close()
	// One hold of the workspace's lock from the stop to the restored start:
	// a concurrent command waits instead of booting the old disk.
	err = c.lc.Reset(ctx, dir, rec, lifecycle.ResetSteps{
		Fresh: func(ctx context.Context) error {
			if err := c.templates().EmptyDisk(ctx, rec.WorkspaceDisk, workspace.DiskBytes()); err != nil {
				return err
			}
			if err := os.Remove(dir.Path(workspace.HistoryFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		},
		Restore: func(ctx context.Context, agent *agentapi.Client, r *instance.Record) error {
			if _, err := agent.PushTar(ctx, workspace.Root, workspace.Root, data); err != nil {
				return fmt.Errorf("restore snapshot %q: %w", snapshot, err)
			}
			m := metaOf(*r)
			m.ResetCount++
			now := time.Now().UTC()
			m.LastResetAt = &now
			setMeta(r, m)
			return nil
		},
	})
	if err != nil {
		return Workspace{}, err
	}
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventReset, Path: snapshot})
	return c.StatusWorkspace(ctx, id)
}

// LogsWorkspace returns the workspace's command history.
func (c *Client) LogsWorkspace(ctx context.Context, id string) ([]HistoryEntry, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return nil, err
	}
	id = rec.ID
	hist, err := workspace.ReadHistory(dir.Path(workspace.HistoryFile))
	out := make([]HistoryEntry, 0, len(hist))
	for _, h := range hist {
		out = append(out, historyFrom(h))
	}
	return out, err
}

// DeleteWorkspace stops a workspace and removes everything it has:
// disk, snapshots, history and secret material.
func (c *Client) DeleteWorkspace(ctx context.Context, id string) (DeleteResult, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return DeleteResult{}, err
	}
	id = rec.ID
	prior, err := c.lc.Delete(ctx, dir, rec)
	return DeleteResult{WorkspaceID: id, Deleted: err == nil, PriorState: prior}, err
}

// prepareGuest readies a freshly booted workspace guest (after create,
// a restart and reset): it sends the workspace's secrets, which the agent
// materialises under /run/pyro-secrets (a tmpfs, never /workspace) and
// from then on redacts from everything it returns.
func (c *Client) prepareGuest(ctx context.Context, dir vmdir.Dir, _ instance.Record, agent *agentapi.Client) error {
	values, err := loadSecrets(dir)
	if err != nil {
		return fmt.Errorf("read workspace secrets: %w", err)
	}
	if len(values) == 0 {
		return nil
	}
	if _, err := agent.SetSecrets(ctx, values); err != nil {
		return instance.Redactor(dir).Error(fmt.Errorf("materialise workspace secrets: %w", err))
	}
	return nil
}
