package pyro

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
)

// RunOptions describe a one-shot command in a fresh VM.
type RunOptions struct {
	Environment string   // default "debian:12"
	Command     []string // argv; a single element is run by /bin/sh -c
	VCPUCount   int      // default 1
	MemMiB      int      // default 1024
	// TimeoutSeconds bounds the command (default 30); the whole process
	// group is killed when it passes and the result says timed_out.
	TimeoutSeconds int
	// TTLSeconds bounds the VM's whole life, boot included (0: no bound).
	TTLSeconds      int
	Network         bool
	AllowHostCompat bool
	Env             map[string]string
	Cwd             string
	// MaxOutputBytes caps captured stdout and stderr each (default 1 MiB);
	// a capped stream is marked truncated.
	MaxOutputBytes int64
	// OnOutput, when set, receives output as the guest writes it
	// (stream is "stdout" or "stderr").
	OnOutput func(stream string, p []byte)
}

// RunResult is the outcome of RunInVM.
type RunResult struct {
	VMID            string `json:"vm_id"`
	Environment     string `json:"environment"`
	Backend         string `json:"backend"`
	Acceleration    string `json:"acceleration"`
	Isolation       string `json:"isolation"`
	VCPUCount       int    `json:"vcpu_count"`
	MemMiB          int    `json:"mem_mib"`
	Network         bool   `json:"network"`
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	TimedOut        bool   `json:"timed_out"`
	Signal          string `json:"signal,omitempty"`
	DurationMS      int64  `json:"duration_ms"`
	BootMS          int64  `json:"boot_ms"`
	TotalMS         int64  `json:"total_ms"`
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

// execRequest turns a command into the agent's request: a single element
// is a shell string, several are an argv.
func execRequest(command []string, env map[string]string, cwd string, timeoutSeconds int, maxOutput int64) (agentapi.ExecRequest, error) {
	if len(command) == 0 {
		return agentapi.ExecRequest{}, errdefs.New(errdefs.ErrInvalidArgument, "pass the command after --, e.g. `pyro run debian:12 -- uname -a`", "no command given")
	}
	if timeoutSeconds < 0 {
		return agentapi.ExecRequest{}, errdefs.New(errdefs.ErrInvalidArgument, "use a positive number of seconds", "timeout_seconds %d is negative", timeoutSeconds)
	}
	req := agentapi.ExecRequest{Env: env, Cwd: cwd, TimeoutMS: int64(timeoutSeconds) * 1000, MaxOutputBytes: maxOutput}
	if len(command) == 1 {
		req.Shell = command[0]
	} else {
		req.Argv = command
	}
	return req, nil
}

// RunInVM boots a fresh VM, runs one command in it and deletes the VM,
// whatever happens. A command that fails is a result with its exit code,
// not an error; errors mean pyro could not run the command at all.
func (c *Client) RunInVM(ctx context.Context, opts RunOptions) (RunResult, error) {
	start := time.Now()
	opts.applyDefaults()
	req, err := execRequest(opts.Command, opts.Env, opts.Cwd, opts.TimeoutSeconds, opts.MaxOutputBytes)
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
	bin, err := c.agentBinary()
	if err != nil {
		return RunResult{}, err
	}
	rec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: opts.Environment, VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB,
		Network: opts.Network, AllowHostCompat: opts.AllowHostCompat})
	if err != nil {
		return RunResult{}, err
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
	machine, err := vm.Boot(ctx, vm.Deps{Dirs: c.dirs, Envs: c.envs, Logger: c.logger, AgentBinary: bin}, vm.Config{
		ID: rec.ID, Dir: dir, Environment: opts.Environment, VCPUs: opts.VCPUCount, MemMiB: opts.MemMiB,
		Network: opts.Network, AllowHostCompat: opts.AllowHostCompat,
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
	res, err := machine.Agent.Exec(ctx, req, opts.OnOutput)
	c.logger.Debug("exec done", "vm_id", machine.ID, "ms", time.Since(execStart).Milliseconds())
	if err != nil {
		if ctx.Err() != nil {
			return RunResult{}, errdefs.Wrap(errdefs.ErrUnavailable, ctx.Err(), "", "run of %q interrupted", opts.Environment)
		}
		return RunResult{}, err
	}
	out := RunResult{
		VMID: machine.ID, Environment: opts.Environment,
		Backend: machine.Backend, Acceleration: machine.Features.Acceleration, Isolation: machine.Features.Isolation,
		VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB, Network: opts.Network,
		ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr,
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		TimedOut: res.TimedOut, Signal: res.Signal, DurationMS: res.DurationMS,
		BootMS: machine.BootMS,
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
