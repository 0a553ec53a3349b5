package pyro

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/pool"
	"github.com/pyro-mcp/pyro/internal/vm"
)

// Warm pool (issue #14): a long-lived process (`pyro pool start`, `pyro mcp
// serve --pool N`, or any SDK client through StartPool) keeps restored,
// paused guests of one configuration and hands one out to RunInVM, in this
// process or another, in a few milliseconds; it refills in the background.
//
// What a pool serves: one-shot runs (RunInVM, `pyro run`, MCP vm_run)
// without a network, of the pool's environment, vCPU count and memory.
// Everything else starts the usual way (warm restore, else cold boot):
// networked runs (their policy and network stack belong to the run),
// VMs and workspaces (a pooled guest is a child of the pool's process and
// dies with it, while a VM or workspace must outlive whoever created it;
// a workspace also needs its own disk opened at restore time). A run whose
// configuration has no pool, or whose pool is empty, starts the usual way
// too: a pool only ever makes a run faster.
//
// A handed-out guest is a new machine: the pool resumes it and gives it
// the run's identity (fresh kernel RNG state before any user code, the
// clock now, its own hostname and machine-id) before the run gets it.
// Results say start "pool" and boot_ms is the claim's time.

// StartPool is the start mode of a run served by a warm pool.
const StartPool = "pool"

// PoolEnv set to "0" keeps runs from using pools.
const PoolEnv = "PYRO_POOL"

// PoolOptions describe a pool. Zero values take the defaults of RunOptions.
type PoolOptions struct {
	Environment string
	VCPUCount   int
	MemMiB      int
	// Size is how many ready guests to keep (default 2, at most 64).
	Size int
	// Workspace keeps whole workspaces ready for CreateWorkspace instead
	// of guests for RunInVM (workspace_pool.go).
	Workspace bool
}

// PoolStatus is a pool's state.
type PoolStatus struct {
	Environment       string `json:"environment"`
	EnvironmentDigest string `json:"environment_digest"`
	VCPUCount         int    `json:"vcpu_count"`
	MemMiB            int    `json:"mem_mib"`
	Network           string `json:"network"`
	// Workspace: the pool serves workspace create, not runs.
	Workspace     bool      `json:"workspace"`
	Size          int       `json:"size"`
	Ready         int       `json:"ready"`
	Leased        int       `json:"leased"`
	Filling       int       `json:"filling"`
	Served        int64     `json:"served"`
	Failures      int64     `json:"failures"`
	LastError     string    `json:"last_error,omitempty"`
	LastHandoutMS float64   `json:"last_handout_ms,omitempty"`
	PID           int       `json:"pid"`
	Socket        string    `json:"socket"`
	StartedAt     time.Time `json:"started_at"`
}

func poolStatusFrom(st pool.Status) PoolStatus {
	return PoolStatus{Environment: st.Key.Environment, EnvironmentDigest: st.Key.EnvDigest, VCPUCount: st.Key.VCPUs, MemMiB: st.Key.MemMiB,
		Network: st.Key.Network, Workspace: st.Key.Workspace, Size: st.Size, Ready: st.Ready, Leased: st.Leased, Filling: st.Filling, Served: st.Served,
		Failures: st.Failures, LastError: st.LastError, LastHandoutMS: st.LastHandoutMS, PID: st.PID, Socket: st.Socket, StartedAt: st.StartedAt}
}

// Pool is a warm pool served by this process. Close it: its guests are
// children of this process and go with it (also when it is killed).
type Pool struct {
	srv *pool.Server
}

// Status is the pool's state now.
func (p *Pool) Status() PoolStatus { return poolStatusFrom(p.srv.Status()) }

// WaitReady waits until n guests are ready (at most the pool's size).
func (p *Pool) WaitReady(ctx context.Context, n int) error { return p.srv.WaitReady(ctx, n) }

// Done is closed once the pool has closed: by Close, or because another
// process asked it to stop (`pyro pool stop`).
func (p *Pool) Done() <-chan struct{} { return p.srv.Done() }

// Close destroys every guest of the pool (waiting and handed out) and
// removes its socket.
func (p *Pool) Close() error { return p.srv.Close() }

// StartPool starts a warm pool of opts' configuration in this process. It
// returns at once; guests are made in the background (the first one builds
// the memory snapshot when there is none). A second pool of the same
// configuration on this state directory is ErrAlreadyExists.
func (c *Client) StartPool(ctx context.Context, opts PoolOptions) (*Pool, error) {
	applyMachineDefaults(&opts.Environment, &opts.VCPUCount, &opts.MemMiB)
	if opts.Size == 0 {
		opts.Size = 2
	}
	rec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: opts.Environment, VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB})
	if err != nil {
		return nil, err
	}
	bin, err := c.agentBinary()
	if err != nil {
		return nil, err
	}
	if rec.EnvironmentDigest, err = c.ensureEnvironment(ctx, rec.Environment); err != nil {
		return nil, err
	}
	key := poolKey(rec)
	fill := func(ctx context.Context) (pool.Guest, error) { return c.fillPool(ctx, key, bin) }
	if opts.Workspace {
		key.Workspace = true
		fill = func(ctx context.Context) (pool.Guest, error) { return c.fillWorkspacePool(ctx, key) }
	}
	srv, err := pool.Start(pool.Config{Root: c.dirs.Root, Key: key, Size: opts.Size, Logger: c.logger, Fill: fill})
	if err != nil {
		return nil, err
	}
	return &Pool{srv: srv}, nil
}

// poolKey is the pool configuration of a run record (poolable says whether
// a pool may serve it at all).
func poolKey(rec instance.Record) pool.Key {
	return pool.Key{Environment: rec.Environment, EnvDigest: rec.EnvironmentDigest, VCPUs: rec.VCPUCount, MemMiB: rec.MemMiB, Network: "off"}
}

// poolable says whether a run may be served by a pool.
func poolable(rec instance.Record) bool {
	return os.Getenv(PoolEnv) != "0" && os.Getenv(vm.WarmEnv) != "0" && !rec.Network && !rec.Policy().Normalized().Mode.Networked()
}

// fillPool makes one pooled guest: a run directory owned by this process
// (the next client's reconcile removes it if this process dies), a warm
// boot, and a pause.
func (c *Client) fillPool(ctx context.Context, key pool.Key, bin string) (pool.Guest, error) {
	rec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: key.Environment, VCPUCount: key.VCPUs, MemMiB: key.MemMiB})
	if err != nil {
		return nil, err
	}
	rec.EnvironmentDigest = key.EnvDigest
	dir, end, err := c.lc.BeginRun(ctx, rec)
	if err != nil {
		return nil, err
	}
	v, err := vm.Boot(ctx, vm.Deps{Dirs: c.dirs, Envs: c.envs, Logger: c.logger, AgentBinary: bin}, vm.Config{
		ID: rec.ID, Dir: dir, Environment: key.Environment, EnvironmentDigest: key.EnvDigest, VCPUs: key.VCPUs, MemMiB: key.MemMiB,
	})
	if err != nil {
		_ = end()
		return nil, err
	}
	g := &pooledVM{v: v, end: end, log: c.logger}
	if v.Features.Isolation != "vm" {
		g.Close()
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "pools need a VM backend (qemu)", "backend %q runs no VM", v.Backend)
	}
	// Priming: one command before the pause warms what every run's first
	// command pays for in a freshly restored guest (~0.3 s under TCG): the
	// agent's exec path, the guest kernel's fork/exec/exit, and the shell,
	// ld.so, libc and /bin/true that a run's `-- true` uses, translated
	// once by TCG. The translations live in this QEMU process and survive
	// the pause; with fixed mappings under TCG (tcgWords in internal/vm)
	// the next process finds them at the same addresses. The command is
	// pyro's own, run before any claimer exists, so nothing of a user
	// leaks into a later claim; it leaves no files, and the hand-out gives
	// the guest fresh RNG state, clock, hostname and machine-id after it.
	prime := agentapi.ExecRequest{Shell: poolPrimeShell, TimeoutMS: 30_000}
	if _, err := v.Agent.Exec(ctx, prime, nil); err != nil {
		return nil, g.failed(ctx, fmt.Errorf("warm up the pooled guest: %w", err))
	}
	if g.p, err = v.NewPauser(ctx); err != nil {
		return nil, g.failed(ctx, err)
	}
	if err := v.Pause(ctx, g.p); err != nil {
		return nil, g.failed(ctx, err)
	}
	return g, nil
}

// poolPrimeShell is the pooled guest's priming command: a shell string,
// as `pyro run ENV -- cmd` sends one word, that also forks and execs a
// program.
const poolPrimeShell = "true; /bin/true"

// pooledVM is a paused guest of this process's pool.
type pooledVM struct {
	v   *vm.VM
	p   vm.Pauser
	end func() error
	log *slog.Logger
}

func (g *pooledVM) ID() string { return g.v.ID }

// failed ends a guest whose priming or pause failed and returns err. A
// guest that died meanwhile counts against the memory snapshot it was
// restored from (vm.VM.DiedUnused), with the console's last lines; a fill
// the pool gave up on (ctx) proves nothing against it. (A run pool's
// guest that dies paused is not counted: a paused guest runs nothing, and
// its QEMU, in the pool's process group, also gets a terminal's ^C.)
func (g *pooledVM) failed(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		// A guest that crashed fails its agent call a moment before its
		// QEMU exits (-no-reboot).
		if note, died := g.v.DiedUnused(g.log, time.Second); died {
			err = fmt.Errorf("%w (the guest's VMM exited: %s)", err, note)
		}
	}
	g.Close()
	return err
}

func (g *pooledVM) Info() pool.GuestInfo {
	return pool.GuestInfo{Backend: g.v.Backend, Acceleration: g.v.Features.Acceleration, Isolation: g.v.Features.Isolation,
		Start: g.v.Start, BootMS: g.v.BootMS, VMMPID: g.v.Machine.Pid()}
}

func (g *pooledVM) HandOut(ctx context.Context, to pool.Claimer) error {
	id := to.ID
	t := time.Now()
	if err := g.p.Resume(ctx); err != nil {
		return err
	}
	resumed := time.Since(t)
	err := g.v.SetIdentity(ctx, id, false)
	g.log.Debug("hand-out", "vm_id", g.v.ID, "to", id, "resume_ms", resumed.Milliseconds(), "identity_ms", (time.Since(t) - resumed).Milliseconds())
	return err
}

func (g *pooledVM) OpenStream(ctx context.Context) (net.Conn, error) {
	return g.v.Agent.OpenStream(ctx)
}
func (g *pooledVM) Done() <-chan struct{} { return g.v.Machine.Done() }

func (g *pooledVM) Close() error {
	var errs []error
	if g.p != nil {
		errs = append(errs, g.p.Close())
	}
	errs = append(errs, g.v.Close(context.Background()), g.end())
	return errors.Join(errs...)
}

// runPooled runs opts in a guest claimed from the pool of rec's
// configuration; ok is false when there is none to claim (the caller then
// starts one the usual way).
func (c *Client) runPooled(ctx context.Context, rec instance.Record, opts RunOptions, req agentapi.ExecRequest, start time.Time) (out RunResult, ok bool, err error) {
	if !poolable(rec) {
		return RunResult{}, false, nil
	}
	lease, err := pool.Claim(ctx, c.dirs.Root, poolKey(rec), rec.ID)
	if err != nil {
		if !errors.Is(err, pool.ErrNoPool) {
			c.logger.Debug("no pooled guest; starting one", "vm_id", rec.ID, "err", err)
		}
		return RunResult{}, false, nil
	}
	defer lease.Close()
	agent := agentapi.NewProxiedClient(lease.Dial, "")
	defer agent.Close()
	c.logger.Debug("claimed pooled guest", "vm_id", rec.ID, "guest", lease.Guest, "claim_ms", lease.ClaimMS, "handout_ms", lease.HandoutMS,
		"since_start_ms", time.Since(start).Milliseconds())
	execStart := time.Now()
	res, err := agent.Exec(ctx, req, opts.OnOutput)
	c.logger.Debug("exec done", "vm_id", rec.ID, "ms", time.Since(execStart).Milliseconds())
	if err != nil {
		if ctx.Err() != nil {
			return RunResult{}, true, errdefs.Wrap(errdefs.ErrUnavailable, ctx.Err(), "", "run of %q interrupted", opts.Environment)
		}
		return RunResult{}, true, err
	}
	out = RunResult{
		VMID: rec.ID, Environment: opts.Environment, EnvironmentDigest: rec.EnvironmentDigest,
		Backend: lease.Info.Backend, Acceleration: lease.Info.Acceleration, Isolation: lease.Info.Isolation,
		VCPUCount: opts.VCPUCount, MemMiB: opts.MemMiB,
		ExecResult: execResultFrom(res),
		BootMS:     int64(lease.ClaimMS + 0.5),
		Start:      StartPool,
	}
	out.NetworkPolicy, out.AllowHosts = policyFields(rec)
	out.NetworkDenials = []NetworkDenial{}
	if lease.Info.Acceleration == "tcg" {
		out.Warnings = append(out.Warnings, "running under TCG software emulation (slower): guest from the warm pool")
	}
	out.TotalMS = time.Since(start).Milliseconds()
	return out, true, nil
}

// ListPools returns the warm pools running on this state directory.
func (c *Client) ListPools(ctx context.Context) ([]PoolStatus, error) {
	// What a killed pool left (its guests' directories) goes first.
	c.lc.Reconcile(ctx)
	list, err := pool.List(ctx, c.dirs.Root)
	if err != nil {
		return nil, err
	}
	out := make([]PoolStatus, 0, len(list))
	for _, st := range list {
		out = append(out, poolStatusFrom(st))
	}
	return out, nil
}

// StopPools asks the pools of env (every pool when env is empty) to shut
// down, and returns the status each had. Each pool destroys its guests,
// those handed out included.
func (c *Client) StopPools(ctx context.Context, env string) ([]PoolStatus, error) {
	list, err := pool.List(ctx, c.dirs.Root)
	if err != nil {
		return nil, err
	}
	out := []PoolStatus{}
	var errs []error
	for _, st := range list {
		if env != "" && st.Key.Environment != env {
			continue
		}
		got, err := pool.Stop(ctx, filepath.Clean(st.Socket))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, poolStatusFrom(got))
	}
	return out, errors.Join(errs...)
}
