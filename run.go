package pyro

import (
	"context"
	"log/slog"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
)

// RunOptions describe a one-shot command in a fresh VM: the VM, and the
// command as ExecOptions (Command, TimeoutSeconds, Env, Cwd,
// MaxOutputBytes, OnOutput; no SecretEnv).
type RunOptions struct {
	Environment string // default "debian:12"
	VCPUCount   int    // default 1
	MemMiB      int    // default 1024
	// TTLSeconds bounds the VM's whole life, boot included (0: no bound).
	TTLSeconds int
	// Network, NetworkPolicy and AllowHosts as in CreateVMOptions.
	Network         bool
	NetworkPolicy   string
	AllowHosts      []string
	AllowHostCompat bool
	ExecOptions
}

// RunResult is the outcome of RunInVM: the VM it ran in, and the command's
// ExecResult (its fields appear inline in JSON).
type RunResult struct {
	VMID         string `json:"vm_id"`
	Environment  string `json:"environment"`
	Backend      string `json:"backend"`
	Acceleration string `json:"acceleration"`
	Isolation    string `json:"isolation"`
	VCPUCount    int    `json:"vcpu_count"`
	MemMiB       int    `json:"mem_mib"`
	Network      bool   `json:"network"`
	// NetworkPolicy and AllowHosts are the policy in force.
	NetworkPolicy string   `json:"network_policy"`
	AllowHosts    []string `json:"allow_hosts"`
	// EnvironmentDigest: see VM.EnvironmentDigest.
	EnvironmentDigest string `json:"environment_digest,omitempty"`
	ExecResult
	BootMS  int64 `json:"boot_ms"`
	TotalMS int64 `json:"total_ms"`
	// Start is "warm" (restored from a memory snapshot), "cold" (booted)
	// or "pool" (handed out by a warm pool: boot_ms is the hand-out).
	Start string `json:"start"`
	// Warnings are notes a person should see, such as running on TCG
	// because KVM is unusable.
	Warnings []string `json:"warnings,omitempty"`
}

func (o *RunOptions) applyDefaults() {
	applyMachineDefaults(&o.Environment, &o.VCPUCount, &o.MemMiB)
	if o.TimeoutSeconds == 0 {
		o.TimeoutSeconds = DefaultTimeoutSeconds
	}
}

// RunInVM boots a fresh VM, runs one command in it and deletes the VM,
// whatever happens. A command that fails is a result with its exit code,
// not an error; errors mean pyro could not run the command at all.
func (c *Client) RunInVM(ctx context.Context, opts RunOptions) (RunResult, error) {
	start := time.Now()
	opts.applyDefaults()
	if err := opts.noSecrets("a one-shot run"); err != nil {
		return RunResult{}, err
	}
	req, err := opts.execRequest()
	if err != nil {
		return RunResult{}, err
	}
	if opts.TTLSeconds < 0 {
		return RunResult{}, errdefs.New(errdefs.ErrInvalidArgument, "use a positive number of seconds", "ttl_seconds %d is negative", opts.TTLSeconds)
	}
	if opts.TTLSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(opts.TTLSeconds)*time.Second)
		defer cancel()
	}
	rec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: opts.Environment, VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB,
		Network: opts.Network, NetworkPolicy: opts.NetworkPolicy, AllowHosts: opts.AllowHosts, AllowHostCompat: opts.AllowHostCompat})
	if err != nil {
		return RunResult{}, err
	}
	bin, err := c.agentBinary()
	if err != nil {
		return RunResult{}, err
	}
	if rec.EnvironmentDigest, err = c.ensureEnvironment(ctx, rec.Environment); err != nil {
		return RunResult{}, err
	}
	// A warm pool of this configuration hands out a guest in milliseconds
	// (pool.go); without one the run starts its own.
	if out, ok, err := c.runPooled(ctx, rec, opts, req, start); ok {
		return out, err
	}
	// The run's directory names this process as its owner, so that should
	// this process be killed, the next client's reconcile removes it.
	dir, end, err := c.lc.BeginRun(ctx, rec)
	if err != nil {
		return RunResult{}, err
	}
	defer func() {
		if err := end(); err != nil {
			c.logger.Warn("remove run directory", "vm_id", rec.ID, "err", err)
		}
	}()
	req.Timings = c.logger.Enabled(ctx, slog.LevelDebug) // the guest's steps, for the line below
	machine, err := vm.Boot(ctx, vm.Deps{Dirs: c.dirs, Envs: c.envs, Logger: c.logger, AgentBinary: bin}, vm.Config{
		ID: rec.ID, Dir: dir, Environment: opts.Environment, VCPUs: opts.VCPUCount, MemMiB: opts.MemMiB,
		Network: rec.Network, NetworkPolicy: rec.Policy(), AllowHostCompat: opts.AllowHostCompat,
		EnvironmentDigest: rec.EnvironmentDigest, OneShot: true,
		FirstExec: &req, // a restored guest gets the command with its identity
	})
	if err != nil {
		return RunResult{}, err
	}
	// The VM goes away on every path out of here, cancellation included.
	defer func() {
		t := time.Now()
		machine.Close(context.Background())
		c.logger.Debug("vm closed", "vm_id", machine.ID, "ms", time.Since(t).Milliseconds())
	}()

	execStart := time.Now()
	res, sent, err := machine.Agent.FirstExec(ctx, opts.OnOutput)
	if !sent {
		res, err = machine.Agent.Exec(ctx, req, opts.OnOutput)
	}
	c.logger.Debug("exec done", "vm_id", machine.ID, "ms", time.Since(execStart).Milliseconds(), "guest_us", res.Timings)
	if err != nil {
		if ctx.Err() != nil {
			return RunResult{}, errdefs.Wrap(errdefs.ErrUnavailable, ctx.Err(), "", "run of %q interrupted", opts.Environment)
		}
		return RunResult{}, err
	}
	out := RunResult{
		VMID: machine.ID, Environment: opts.Environment, EnvironmentDigest: rec.EnvironmentDigest,
		Backend: machine.Backend, Acceleration: machine.Features.Acceleration, Isolation: machine.Features.Isolation,
		VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB, Network: rec.Network,
		ExecResult: execResultFrom(res),
		BootMS:     machine.BootMS,
		Start:      machine.Start,
	}
	out.NetworkPolicy, out.AllowHosts = policyFields(rec)
	if machine.Net != nil { // a run's network lives in this process
		out.NetworkDenials = denialsFrom(machine.Net.Denials())
	}
	if machine.Features.Acceleration == "tcg" {
		out.Warnings = append(out.Warnings, "running under TCG software emulation (slower): "+machine.AccelNote)
	}
	if machine.Features.Isolation == "namespaces" {
		out.Warnings = append(out.Warnings, "host-compat: weaker isolation (Linux namespaces, not a VM): "+machine.AccelNote)
	}
	out.TotalMS = time.Since(start).Milliseconds()
	return out, nil
}
