package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

var execTrue = agentapi.ExecRequest{Argv: []string{"true"}, TimeoutMS: 30_000}

// benchVM measures the agent channel on its own (a VM booted in this
// process, as RunInVM does), the same exec through a supervisor's proxy,
// StatusVM, and the supervisor's memory.
func benchVM(ctx context.Context, cfg *config) (rows []row, err error) {
	dirs := statedir.Dirs{Root: cfg.client.StateDir()}

	// 1. In-process VM: the agent client talks to the guest directly.
	machine, err := vm.Boot(ctx, vm.Deps{Dirs: dirs, Envs: envstore.New(dirs.Environments(), dirs.Cache()), AgentBinary: cfg.pyroBin},
		vm.Config{Environment: cfg.env, VCPUs: 1, MemMiB: 1024})
	if err != nil {
		return nil, fmt.Errorf("boot in-process vm: %w", err)
	}
	accel := machine.Features.Acceleration
	direct, directNote, err := execLoop(ctx, machine.Agent, cfg.iters)
	var directHealth []time.Duration
	if err == nil {
		directHealth, err = healthLoop(ctx, machine.Agent, cfg.iters)
	}
	machine.Close(context.Background())
	if err != nil {
		return nil, fmt.Errorf("agent channel: %w", err)
	}
	rows = append(rows,
		goalMS(fmt.Sprintf("exec true, agent channel (%s)", accel), direct, 2),
		msRow("health round trip, agent channel", directHealth))

	// 2. A VM under its own supervisor, as `pyro vm start` makes.
	c := cfg.client
	v, err := c.CreateVM(ctx, pyro.CreateVMOptions{Environment: cfg.env})
	if err != nil {
		return rows, err
	}
	defer func() {
		if _, derr := c.DeleteVM(context.Background(), v.VMID); derr != nil && err == nil {
			err = fmt.Errorf("delete vm %s: %w", v.VMID, derr)
		}
	}()
	start := time.Now()
	if v, err = c.StartVM(ctx, v.VMID); err != nil {
		return rows, err
	}
	startVM := time.Since(start)

	status, err := timeIt(cfg.iters, func() error {
		s, err := c.StatusVM(ctx, v.VMID)
		if err == nil && s.State != "running" {
			err = fmt.Errorf("vm %s is %s", v.VMID, s.State)
		}
		return err
	})
	if err != nil {
		return rows, err
	}

	agent := supervisor.NewClient(vmdir.Dir(dirs.VMs() + "/" + v.VMID)).Agent()
	defer agent.Close()
	proxied, proxiedNote, err := execLoop(ctx, agent, cfg.iters)
	var proxiedHealth []time.Duration
	if err == nil {
		proxiedHealth, err = healthLoop(ctx, agent, cfg.iters)
	}
	if err != nil {
		return rows, fmt.Errorf("through the supervisor: %w", err)
	}

	// The supervisor has served ~100 requests; let it settle, then read its
	// resident set.
	time.Sleep(time.Second)
	if v, err = c.StatusVM(ctx, v.VMID); err != nil {
		return rows, err
	}
	rss, err := vmRSSKiB(v.SupervisorPID)
	if err != nil {
		return rows, err
	}
	rows = append(rows,
		goalMS("exec true, through supervisor proxy", proxied, 0),
		msRow("health round trip, supervisor proxy", proxiedHealth),
		msRow("StatusVM of a running vm (SDK)", status),
		row{name: "StartVM (boot to agent ready)", value: ms(startVM), unit: "ms", note: "(n=1)"},
		row{name: "idle supervisor RSS (VmRSS)", value: float64(rss) / 1024, unit: "MiB", goal: 20, goalText: "<= 20 MiB",
			note: fmt.Sprintf("(pid %d)", v.SupervisorPID)},
	)
	for _, n := range []string{directNote, proxiedNote} {
		if n != "" {
			rows = append(rows, row{name: "WARNING", note: n})
		}
	}
	return rows, nil
}

// execLoop times n round trips of `true` after one warm-up. A run whose
// exit code is not 0 is counted and described in the note, not fatal.
func execLoop(ctx context.Context, a *agentapi.Client, n int) (d []time.Duration, note string, err error) {
	bad, first := 0, ""
	run := func() error {
		r, err := a.Exec(ctx, execTrue, nil)
		if err == nil && r.ExitCode != 0 {
			if bad++; first == "" {
				first = fmt.Sprintf("exit %d signal %q timed_out %v duration %d ms stderr %q", r.ExitCode, r.Signal, r.TimedOut, r.DurationMS, r.Stderr)
			}
		}
		return err
	}
	if err := run(); err != nil {
		return nil, "", err
	}
	d, err = timeIt(n, run)
	if bad > 0 {
		note = fmt.Sprintf("%d of %d runs of true did not exit 0, first: %s", bad, n+1, first)
	}
	return d, note, err
}

// healthLoop times n health round trips (no process in the guest).
func healthLoop(ctx context.Context, a *agentapi.Client, n int) ([]time.Duration, error) {
	if _, err := a.Health(ctx); err != nil {
		return nil, err
	}
	return timeIt(n, func() error { _, err := a.Health(ctx); return err })
}

// goalMS is a median-in-ms row with a goal of at most goal ms (none if 0).
func goalMS(name string, d []time.Duration, goal float64) row {
	r := msRow(name, d)
	if goal > 0 {
		r.goal, r.goalText = goal, fmt.Sprintf("<= %s ms", num(goal))
	}
	return r
}

// vmRSSKiB reads VmRSS of pid from /proc.
func vmRSSKiB(pid int) (int64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no supervisor pid")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
