// Package pyro is the Go SDK of pyro: run an AI agent's commands in
// disposable Linux microVMs.
//
// A Client is safe for concurrent use. Every method takes a context; a
// cancelled context stops the work and tears down whatever it started.
// Errors carry a category testable with errors.Is (ErrNotFound,
// ErrInvalidArgument, ErrFailedPrecondition, ErrUnavailable,
// ErrAlreadyExists) and a hint a person can act on.
package pyro

import (
	"context"
	"log/slog"
	"os/exec"

	"github.com/pyro-mcp/pyro/internal/doctor"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostwrite"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/statedir"
)

// Error categories. Test with errors.Is(err, pyro.ErrNotFound).
var (
	ErrNotFound           = errdefs.ErrNotFound
	ErrAlreadyExists      = errdefs.ErrAlreadyExists
	ErrFailedPrecondition = errdefs.ErrFailedPrecondition
	ErrInvalidArgument    = errdefs.ErrInvalidArgument
	ErrUnavailable        = errdefs.ErrUnavailable
)

// Options configure a Client. The zero value is usable.
type Options struct {
	// StateDir holds environments, caches and VMs. Default: $PYRO_HOME,
	// else $XDG_DATA_HOME/pyro, else ~/.local/share/pyro.
	StateDir string
	// Logger receives debug and info records; nil keeps the SDK silent.
	Logger *slog.Logger
	// Binary is the static pyro executable that becomes the guest agent.
	// Default: `pyro` on PATH.
	Binary string
}

// Client is the entry point of the SDK.
type Client struct {
	dirs   statedir.Dirs
	envs   *envstore.Store
	logger *slog.Logger
	binary string
	lc     *lifecycle.Manager
	// imagePulls limits implicit image pulls (see SetImagePulls).
	imagePulls ImagePullPolicy
}

// New returns a Client.
func New(opts Options) (*Client, error) {
	root := opts.StateDir
	if root == "" {
		root = statedir.Root()
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := statedir.Prepare(root); err != nil {
		return nil, err
	}
	dirs := statedir.Dirs{Root: root}
	c := &Client{
		dirs:   dirs,
		envs:   envstore.New(dirs.Environments(), dirs.Cache()),
		logger: logger,
		binary: opts.Binary,
	}
	c.lc = lifecycle.New(lifecycle.Config{
		Dirs: dirs, Logger: logger, Binary: c.agentBinary,
		CheckEnvironment: func(name string) error { _, err := c.envs.Resolve(name, ""); return err },
		PrepareGuest:     c.prepareGuest,
	})
	// The pyro binary also serves as the confined debugfs that reads and
	// writes guest-written images on the host (internal/hostwrite): the
	// CLI names itself first; an SDK program names the one it runs.
	if bin, err := c.agentBinary(); err == nil {
		hostwrite.UseTool(bin)
	}
	return c, nil
}

// ReconcileReport counts the leftovers of interrupted work (a killed
// `pyro run`, a delete cut short) that the client removed when first used.
type ReconcileReport struct {
	InterruptedRuns int      `json:"interrupted_runs"`
	HalfDeleted     int      `json:"half_deleted"`
	Unrecorded      int      `json:"unrecorded"`
	HalfMade        int      `json:"half_made"`
	ForkStaging     int      `json:"fork_staging"`
	Removed         int      `json:"removed"`
	Failed          []string `json:"failed,omitempty"`
	Incomplete      bool     `json:"incomplete,omitempty"`
}

// Reconcile removes what interrupted runs left behind under the state
// directory (within a small time budget) and says what it removed. It runs
// once per Client, on its first lifecycle call or here; later calls return
// the same report.
func (c *Client) Reconcile(ctx context.Context) ReconcileReport {
	r := c.lc.Reconcile(ctx)
	return ReconcileReport{InterruptedRuns: r.InterruptedRuns, HalfDeleted: r.HalfDeleted, Unrecorded: r.Unrecorded, HalfMade: r.HalfMade,
		ForkStaging: r.ForkStaging, Removed: r.Removed(), Failed: r.Failed, Incomplete: r.Incomplete}
}

// StateDir returns the client's state directory.
func (c *Client) StateDir() string { return c.dirs.Root }

// agentBinary resolves the pyro executable placed in guests.
func (c *Client) agentBinary() (string, error) {
	if c.binary != "" {
		return c.binary, nil
	}
	p, err := exec.LookPath("pyro")
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "put the pyro binary on PATH or set Options.Binary", "pyro binary not found")
	}
	return p, nil
}

// Doctor checks this host: VMM binaries and versions, KVM (a real probe
// boot), TCG, environment build tools, the state directory, free disk and
// installed environments, and reports the leftovers of interrupted runs
// that the reconcile removed. Each check has a status and a fix-it hint.
func (c *Client) Doctor(ctx context.Context) (DoctorReport, error) {
	bin, err := c.agentBinary()
	if err != nil {
		bin = ""
	}
	r := doctor.Run(ctx, doctor.Inputs{Dirs: c.dirs, Envs: c.envs, AgentBinary: bin})
	// What interrupted runs left is removed by the reconcile; say so.
	rr := c.Reconcile(ctx)
	r.Checks = append(r.Checks, doctor.Leftovers(rr.Removed, rr.Failed, rr.Incomplete))
	r.Checks = append(r.Checks, c.snapshotCheck()) // warm.go
	return doctorFrom(r), nil
}
