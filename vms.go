package pyro

import (
	"context"
	"errors"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// VM lifecycle, in brief:
//
//	CreateVM   -> state "created" (recorded, nothing runs)
//	StartVM    -> boots it under a detached supervisor: "running"
//	ExecVM     -> runs one command, then deletes the VM (auto-clean)
//	StopVM     -> powers it off: "stopped" (files stay; StartVM boots it again)
//	DeleteVM   -> stops it if needed and removes every file
//	StatusVM   -> observed state: created, starting, running, stopped,
//	              expired (its TTL passed) or broken (with the reason)
//
// StartVM and StopVM are idempotent: starting a running VM or stopping a
// stopped one returns its status. DeleteVM of an unknown (or already
// deleted) id is ErrNotFound. Calls from many processes are safe: lifecycle
// changes take a per-VM lock.

// CreateVMOptions describe a VM. Zero values take the contract defaults.
type CreateVMOptions struct {
	Environment string // default "debian:12"
	VCPUCount   int    // default 1
	MemMiB      int    // default 1024
	// TTLSeconds, when set, stops the VM that many seconds after creation
	// (state "expired"); ReapExpired then deletes it.
	TTLSeconds int
	// Network is the contract's switch: true means NetworkPolicy egress.
	Network bool
	// NetworkPolicy is off (default), egress or egress+published-ports;
	// AllowHosts narrows egress (see NetworkPolicyOff).
	NetworkPolicy   string
	AllowHosts      []string
	AllowHostCompat bool
}

// VM is a VM's record and observed status.
type VM struct {
	VMID            string     `json:"vm_id"`
	Environment     string     `json:"environment"`
	State           string     `json:"state"`
	ReasonKind      string     `json:"reason_kind,omitempty"`
	Reason          string     `json:"reason,omitempty"`
	VCPUCount       int        `json:"vcpu_count"`
	MemMiB          int        `json:"mem_mib"`
	Network         bool       `json:"network"`
	NetworkPolicy   string     `json:"network_policy"`
	AllowHosts      []string   `json:"allow_hosts"`
	AllowHostCompat bool       `json:"allow_host_compat"`
	TTLSeconds      int        `json:"ttl_seconds,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
	Backend         string     `json:"backend,omitempty"`
	Acceleration    string     `json:"acceleration,omitempty"`
	Isolation       string     `json:"isolation,omitempty"`
	BootMS          int64      `json:"boot_ms,omitempty"`
	Start           string     `json:"start,omitempty"` // "warm" or "cold"
	SupervisorPID   int        `json:"supervisor_pid,omitempty"`
	VMMPID          int        `json:"vmm_pid,omitempty"`

	// EnvironmentDigest is the image manifest digest of an image
	// environment, the catalog environment's manifest digest otherwise.
	EnvironmentDigest string `json:"environment_digest,omitempty"`
}

// ExecOptions describe one command: the one shape for RunInVM (embedded
// in RunOptions), ExecVM and ExecWorkspace. Zero values take the contract
// defaults.
type ExecOptions struct {
	// Command is an argv; a single element is run by /bin/sh -c.
	Command []string
	// TimeoutSeconds kills the command's process group when it passes
	// (default 30); the result then says timed_out.
	TimeoutSeconds int
	Env            map[string]string
	// Cwd defaults to /workspace in a workspace, / elsewhere.
	Cwd string
	// SecretEnv maps a workspace's secret names to environment variable
	// names for this command only ("" means the secret's own name).
	// Workspaces only: VMs and runs have no secrets.
	SecretEnv map[string]string
	// MaxOutputBytes caps captured stdout and stderr each (default 1 MiB);
	// a capped stream is marked truncated.
	MaxOutputBytes int64
	// OnOutput, when set, receives output as the guest writes it
	// (stream is "stdout" or "stderr").
	OnOutput func(stream string, p []byte)
}

// execRequest turns options into the agent's request: a single command
// element is a shell string, several are an argv.
func (o ExecOptions) execRequest() (agentapi.ExecRequest, error) {
	if len(o.Command) == 0 {
		return agentapi.ExecRequest{}, errdefs.New(errdefs.ErrInvalidArgument, "pass the command after --, e.g. `pyro run debian:12 -- uname -a`", "no command given")
	}
	if o.TimeoutSeconds < 0 {
		return agentapi.ExecRequest{}, errdefs.New(errdefs.ErrInvalidArgument, "use a positive number of seconds", "timeout_seconds %d is negative", o.TimeoutSeconds)
	}
	timeout := o.TimeoutSeconds
	if timeout == 0 {
		timeout = DefaultTimeoutSeconds
	}
	req := agentapi.ExecRequest{Env: o.Env, Cwd: o.Cwd, TimeoutMS: int64(timeout) * 1000, MaxOutputBytes: o.MaxOutputBytes, SecretEnv: o.SecretEnv}
	if len(o.Command) == 1 {
		req.Shell = o.Command[0]
	} else {
		req.Argv = o.Command
	}
	return req, nil
}

// noSecrets refuses SecretEnv where there are no secrets.
func (o ExecOptions) noSecrets(what string) error {
	if len(o.SecretEnv) > 0 {
		return errdefs.New(errdefs.ErrInvalidArgument, "secrets belong to workspaces; use a workspace", "%s has no secrets (secret_env given)", what)
	}
	return nil
}

// ExecResult is the outcome of a command. A command that fails is a
// result with its exit code, not an error.
type ExecResult struct {
	VMID            string `json:"vm_id,omitempty"`
	WorkspaceID     string `json:"workspace_id,omitempty"`
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	TimedOut        bool   `json:"timed_out"`
	Signal          string `json:"signal,omitempty"`
	DurationMS      int64  `json:"duration_ms"`
	// NetworkDenials are the lookups and connections the network policy
	// refused since the previous command (empty without a network).
	NetworkDenials []NetworkDenial `json:"network_denials"`
}

// DeleteResult says what a delete removed.
type DeleteResult struct {
	VMID        string `json:"vm_id,omitempty"`
	WorkspaceID string `json:"workspace_id,omitempty"`
	Deleted     bool   `json:"deleted"`
	PriorState  string `json:"prior_state"`
}

// ReapResult lists what ReapExpired removed.
type ReapResult struct {
	Removed []DeleteResult `json:"removed"`
	Count   int            `json:"count"`
}

func (o *CreateVMOptions) applyDefaults() {
	applyMachineDefaults(&o.Environment, &o.VCPUCount, &o.MemMiB)
}

// applyMachineDefaults fills the contract defaults every kind of VM shares.
func applyMachineDefaults(environment *string, vcpus, memMiB *int) {
	if *environment == "" {
		*environment = DefaultEnvironment
	}
	if *vcpus == 0 {
		*vcpus = DefaultVCPUCount
	}
	if *memMiB == 0 {
		*memMiB = DefaultMemMiB
	}
}

// newRecord validates options and builds a record of the given kind.
func newRecord(kind string, o CreateVMOptions) (instance.Record, error) {
	if err := validateEnvironmentName(o.Environment); err != nil {
		return instance.Record{}, err
	}
	if err := vm.ValidateResources(o.VCPUCount, o.MemMiB); err != nil {
		return instance.Record{}, err
	}
	if o.TTLSeconds < 0 {
		return instance.Record{}, errdefs.New(errdefs.ErrInvalidArgument, "use a positive number of seconds, or 0 for none", "ttl_seconds %d is negative", o.TTLSeconds)
	}
	policy, err := resolvePolicy(o.Network, o.NetworkPolicy, o.AllowHosts)
	if err != nil {
		return instance.Record{}, err
	}
	now := time.Now().UTC()
	r := instance.Record{
		ID: vmdir.NewID(), Kind: kind, Environment: o.Environment, VCPUCount: o.VCPUCount, MemMiB: o.MemMiB,
		Network: o.Network, AllowHostCompat: o.AllowHostCompat, TTLSeconds: o.TTLSeconds, CreatedAt: now,
	}
	r.SetPolicy(policy)
	if o.TTLSeconds > 0 {
		exp := now.Add(time.Duration(o.TTLSeconds) * time.Second)
		r.ExpiresAt = &exp
	}
	return r, nil
}

// CreateVM records a VM. It does not boot it: call StartVM.
func (c *Client) CreateVM(ctx context.Context, opts CreateVMOptions) (VM, error) {
	opts.applyDefaults()
	rec, err := newRecord("vm", opts)
	if err != nil {
		return VM{}, err
	}
	// Fail now, not at start, when the environment is missing.
	if rec.EnvironmentDigest, err = c.ensureEnvironment(ctx, rec.Environment); err != nil {
		return VM{}, err
	}
	if _, _, err := c.lc.Create(ctx, rec, nil); err != nil {
		return VM{}, err
	}
	return c.StatusVM(ctx, rec.ID)
}

// vmDir returns an existing VM's directory and record.
func (c *Client) vmDir(id string) (vmdir.Dir, instance.Record, error) {
	return c.lc.Open(instance.KindVM, id)
}

func vmFrom(rec instance.Record, st lifecycle.Status) VM {
	policy, hosts := policyFields(rec)
	return VM{
		NetworkPolicy: policy, AllowHosts: hosts,
		VMID: rec.ID, Environment: rec.Environment, EnvironmentDigest: rec.EnvironmentDigest, State: st.State, ReasonKind: string(st.Cause), Reason: st.Reason,
		VCPUCount: rec.VCPUCount, MemMiB: rec.MemMiB, Network: rec.Network, AllowHostCompat: rec.AllowHostCompat,
		TTLSeconds: rec.TTLSeconds, CreatedAt: rec.CreatedAt, ExpiresAt: rec.ExpiresAt,
		Backend: st.Backend, Acceleration: st.Acceleration, Isolation: st.Isolation, BootMS: st.BootMS, Start: st.Start,
		SupervisorPID: st.SupervisorPID, VMMPID: st.VMMPID,
	}
}

// StatusVM returns a VM's observed status.
func (c *Client) StatusVM(ctx context.Context, id string) (VM, error) {
	dir, rec, err := c.vmDir(id)
	if err != nil {
		return VM{}, err
	}
	return vmFrom(rec, c.lc.Observe(ctx, dir, rec)), nil
}

// ListVMs returns every VM with its observed status, oldest first.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) {
	c.lc.Reconcile(ctx)
	dirs, recs, err := c.lc.List(instance.KindVM)
	if err != nil {
		return nil, err
	}
	var out []VM
	for i, dir := range dirs {
		out = append(out, vmFrom(recs[i], c.lc.Observe(ctx, dir, recs[i])))
	}
	return out, nil
}

// StartVM boots a VM under its own supervisor and returns once the guest
// agent answers. Starting a running VM returns its status.
func (c *Client) StartVM(ctx context.Context, id string) (VM, error) {
	dir, rec, err := c.vmDir(id)
	if err != nil {
		return VM{}, err
	}
	st, err := c.lc.Start(ctx, dir, rec)
	if err != nil {
		return VM{}, err
	}
	return vmFrom(rec, st), nil
}

// execIn runs one command through an agent client and closes it; t, when
// timing, gets the guest's steps of the call.
func execIn(ctx context.Context, agent *agentapi.Client, opts ExecOptions, t *phases) (ExecResult, error) {
	defer agent.Close()
	req, err := opts.execRequest()
	if err != nil {
		return ExecResult{}, err
	}
	req.Timings = t != nil
	r, err := agent.Exec(ctx, req, opts.OnOutput)
	t.guest(r.Timings)
	if err != nil {
		return ExecResult{}, err
	}
	return execResultFrom(r), nil
}

// ExecVM runs one command in a running VM, then deletes the VM (the
// contract's auto-clean), whether the command succeeded or not.
func (c *Client) ExecVM(ctx context.Context, id string, opts ExecOptions) (ExecResult, error) {
	dir, rec, err := c.vmDir(id)
	if err != nil {
		return ExecResult{}, err
	}
	if err := opts.noSecrets("a vm"); err != nil {
		return ExecResult{}, err
	}
	agent, err := c.lc.Agent(ctx, dir, rec)
	if err != nil {
		return ExecResult{}, err
	}
	res, err := execIn(ctx, agent, opts, nil)
	res.VMID = id
	res.NetworkDenials = takeDenials(ctx, dir, rec)
	if _, derr := c.DeleteVM(context.WithoutCancel(ctx), id); derr != nil && !errors.Is(derr, errdefs.ErrNotFound) {
		err = errors.Join(err, derr)
	}
	return res, err
}

// StopVM powers a VM off. Its files stay; StartVM boots it again.
// Stopping a VM that is not running returns its status.
func (c *Client) StopVM(ctx context.Context, id string) (VM, error) {
	dir, _, err := c.vmDir(id)
	if err != nil {
		return VM{}, err
	}
	if err := c.lc.Stop(ctx, dir); err != nil {
		return VM{}, err
	}
	return c.StatusVM(ctx, id)
}

// DeleteVM stops a VM if needed and removes all its files. Deleting an
// unknown or already deleted VM is ErrNotFound.
func (c *Client) DeleteVM(ctx context.Context, id string) (DeleteResult, error) {
	dir, rec, err := c.vmDir(id)
	if err != nil {
		return DeleteResult{}, err
	}
	prior, err := c.lc.Delete(ctx, dir, rec)
	return DeleteResult{VMID: id, Deleted: err == nil, PriorState: prior}, err
}

// ReapExpired deletes VMs whose TTL passed and VMs whose supervisor is
// gone without a clean stop (broken), and returns what it removed.
func (c *Client) ReapExpired(ctx context.Context) (ReapResult, error) {
	c.lc.Reconcile(ctx)
	reaped, err := c.lc.Reap(ctx, instance.KindVM)
	res := ReapResult{Removed: []DeleteResult{}}
	for _, r := range reaped {
		res.Removed = append(res.Removed, DeleteResult{VMID: r.ID, Deleted: true, PriorState: r.PriorState})
	}
	res.Count = len(res.Removed)
	return res, err
}
