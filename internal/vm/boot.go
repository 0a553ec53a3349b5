// Package vm boots one guest from an environment and hands back a handle
// with a connected agent client. Booting is a named list of steps, each of
// which may register a cleanup; cleanups run LIFO exactly once, on failure
// or on Close. A future restore-from-snapshot swaps steps instead of adding
// branches to them.
package vm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/initramfs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/netstack"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"

	// The backends a real pyro can boot with register themselves.
	_ "github.com/pyro-mcp/pyro/internal/vmm/hostcompat"
	_ "github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// Deps are the long-lived things a boot needs.
type Deps struct {
	Dirs   statedir.Dirs
	Envs   *envstore.Store
	Logger *slog.Logger
	// AgentBinary is the static pyro binary placed in the guest as /init.
	AgentBinary string
}

// Config is what the caller asks for.
type Config struct {
	// ID and Dir name an existing VM directory owned by the caller (a
	// supervisor); then Close leaves the directory in place. When empty, a
	// fresh id and directory are made and removed on Close.
	ID          string
	Dir         vmdir.Dir
	Environment string
	// EnvironmentDigest pins an image environment to the digest it was
	// created from (a workspace keeps its image when the tag moves).
	EnvironmentDigest string
	VCPUs             int
	MemMiB            int
	Network           bool
	AllowHostCompat   bool
	// WorkspaceDisk is an ext4 image attached read-write as the guest's
	// /workspace (second disk); empty for none.
	WorkspaceDisk string
	// WorkspaceBase is a layered workspace's read-only baseline image
	// (third disk): /workspace is then its overlay with WorkspaceDisk.
	WorkspaceBase string
	// TransferDisk is a layered workspace's transfer disk
	// (vmm.Spec.TransferDisk), empty for none.
	TransferDisk string
	// WorkspaceChain is the upper layer as a chain of images, when it is
	// one (vmm.Spec.WorkspaceChain).
	WorkspaceChain []string
	// BootTimeout bounds the wait for the guest agent (default 90 s: TCG
	// guests on a busy 2-core host can take several seconds).
	BootTimeout time.Duration
	// Backend names a registered backend to use; empty means $PYRO_BACKEND,
	// else the first one whose probe succeeds.
	Backend string
	// Needs is what the backend must be able to enforce; a backend without
	// it is refused with ErrFailedPrecondition.
	Needs vmm.Needs
	// NetworkPolicy is what the guest network allows when Network is set
	// (zero: egress without an allowlist); DNSUpstream the resolver it
	// forwards admitted lookups to (empty: $PYRO_DNS_UPSTREAM, else the
	// host's). See network.go.
	NetworkPolicy netpolicy.Policy
	DNSUpstream   string
	// Cold skips memory snapshots: the guest boots from its kernel even
	// when a snapshot could restore it (also $PYRO_WARM=0).
	Cold bool
	// OneShot: the guest lives for one command (a run); its RAM may use
	// huge pages (vmm.Spec.HugePages).
	OneShot bool
	// AwaitBase, when set, returns once WorkspaceBase is whole and
	// durable: it is still being built when the boot starts
	// (awaitbase.go).
	AwaitBase func(context.Context) error
	// FreshWorkspace, set only for the first boot of a new unseeded
	// layered workspace whose disks are untouched copies of the empty
	// templates, is its baseline's digest: a warm start may then restore a
	// guest with /workspace already mounted (warm_mounted.go).
	FreshWorkspace string
	// FirstExec, when set, is sent to a restored guest with its identity
	// (agentapi.Client.First), which starts it once the identity is
	// applied: read its result with Agent.FirstExec (a cold boot sends
	// none; then FirstExec reports ok false). For one-shot guests only.
	FirstExec *agentapi.ExecRequest
	// buildNow: replace an unusable snapshot at once (PrepareSnapshot)
	// instead of booting cold this time.
	buildNow bool
}

// VM is a booted guest.
type VM struct {
	ID          string
	Dir         vmdir.Dir
	Environment envstore.Installed
	Backend     string
	Features    vmm.Features
	// AccelNote says why this acceleration was chosen (e.g. the failed KVM probe).
	AccelNote string
	Machine   vmm.Machine
	Agent     *agentapi.Client
	Health    agentapi.Health
	BootMS    int64
	// Net is the guest's network stack (nil without a network): the
	// supervisor reads denials, changes the policy and publishes ports
	// through it.
	Net *netstack.Stack
	// Start says how the guest came up: StartWarm (restored from a memory
	// snapshot) or StartCold (booted).
	Start string
	// SnapshotNote says why a cold boot did not restore (empty otherwise).
	SnapshotNote string
	// Inherited is what a fork's guest still ran when it started (fork.go;
	// nil for other boots, and from an agent that does not report it).
	Inherited *agentapi.Inherited

	netFile  *os.File     // the VMM's end of Net's socket
	logger   *slog.Logger // Deps.Logger, for the backend's debug lines
	initrd   string
	warm     warmState
	backend  vmm.Backend
	mu       sync.Mutex
	cleanups []func(context.Context) error
	closed   bool
	closeErr error

	baseReady bool     // Config.AwaitBase returned (awaitbase.go)
	gateConn  net.Conn // a fork's held fork-gate connection, for its yield (forkyield.go)
}

// StepFunc is one boot step. It may register cleanups with v.OnClose.
type StepFunc func(ctx context.Context, d Deps, c Config, v *VM) error

// Step is a named boot step.
type Step struct {
	Name string
	Run  StepFunc
}

// Steps is an ordered list of boot steps. Its methods return changed
// copies, so a caller's list never alters another's.
type Steps []Step

// Names of the cold-boot steps, for Swap and Remove.
const (
	StepResolveEnvironment = "resolve environment"
	StepPrepareDirectory   = "prepare directory"
	StepBuildInitramfs     = "build initramfs"
	StepChooseBackend      = "choose backend"
	StepCheckFeatures      = "check features"
	StepStartVMM           = "start vmm"
	StepConnectAgent       = "connect agent"
)

// ColdBoot returns the steps from nothing to a guest agent that answers.
// A restore from a snapshot swaps steps (start vmm, connect agent) instead
// of adding branches to them.
func ColdBoot() Steps {
	return Steps{
		{StepResolveEnvironment, resolveEnvironment},
		{StepPrepareDirectory, prepareDir},
		{StepBuildInitramfs, buildInitramfs},
		{StepChooseBackend, chooseBackend},
		{StepCheckFeatures, checkFeatures},
		{StepStartNetwork, startNetwork},
		{StepAwaitBaseCold, awaitBaseCold}, // awaitbase.go
		{StepStartVMM, startVMM},
		{StepConnectAgent, connectAgent},
	}
}

func (s Steps) index(name string) int {
	for i, st := range s {
		if st.Name == name {
			return i
		}
	}
	panic(fmt.Sprintf("vm: no boot step %q", name))
}

// Swap returns a copy with the step called name running run instead.
// Naming a step that is not there is a programming error (panic).
func (s Steps) Swap(name string, run StepFunc) Steps {
	out := append(Steps(nil), s...)
	out[out.index(name)].Run = run
	return out
}

// Remove returns a copy without the step called name.
func (s Steps) Remove(name string) Steps {
	i := s.index(name)
	return append(append(Steps(nil), s[:i]...), s[i+1:]...)
}

// InsertAfter returns a copy with st run right after the step called name.
func (s Steps) InsertAfter(name string, st Step) Steps {
	i := s.index(name) + 1
	out := append(Steps(nil), s[:i]...)
	out = append(out, st)
	return append(out, s[i:]...)
}

// Names lists the steps in order.
func (s Steps) Names() []string {
	out := make([]string, len(s))
	for i, st := range s {
		out[i] = st.Name
	}
	return out
}

// Boot starts a guest: restored from a memory snapshot when the backend
// can (WarmBoot, building the snapshot on first use), booted otherwise or
// when the restore fails. On failure everything already set up is torn
// down before it returns.
func Boot(ctx context.Context, d Deps, c Config) (*VM, error) {
	if !warmWanted(c) {
		return BootWith(ctx, ColdBoot(), d, c)
	}
	v, err := BootWith(ctx, WarmBoot(), d, c)
	var wf *warmFailure
	if err == nil || !errors.As(err, &wf) || ctx.Err() != nil {
		return v, err
	}
	if d.Logger != nil {
		d.Logger.Warn("restore from memory snapshot failed; booting cold", "vm_id", c.ID, "err", err)
	}
	c.Cold = true
	v, err = BootWith(ctx, ColdBoot(), d, c)
	if v != nil {
		v.SnapshotNote = "restore failed: " + wf.Error()
	}
	return v, err
}

// BootWith runs the given steps in order. On failure everything already
// set up is torn down (LIFO) before it returns.
func BootWith(ctx context.Context, steps Steps, d Deps, c Config) (*VM, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 90 * time.Second
	}
	if err := ValidateResources(c.VCPUs, c.MemMiB); err != nil {
		return nil, err
	}
	v := &VM{ID: c.ID, Dir: c.Dir, logger: d.Logger}
	if v.ID == "" {
		v.ID = vmdir.NewID()
	}
	start := time.Now()
	for _, s := range steps {
		t := time.Now()
		if err := s.Run(ctx, d, c, v); err != nil {
			cerr := v.Close(context.Background())
			if ctx.Err() != nil && !errors.Is(err, errdefs.ErrUnavailable) {
				err = fmt.Errorf("%s: %w", s.Name, ctx.Err())
			}
			return nil, errors.Join(err, cerr)
		}
		d.Logger.Debug("boot step", "vm_id", v.ID, "step", s.Name, "ms", time.Since(t).Milliseconds())
	}
	v.BootMS = time.Since(start).Milliseconds()
	if v.Start == "" {
		v.Start = StartCold
	}
	return v, nil
}

// OnClose registers a cleanup that Close runs (LIFO, exactly once).
func (v *VM) OnClose(f func(context.Context) error) { v.onClose(f) }

// Use makes b the VM's backend (a step that chooses one calls it); note
// says why, for people.
func (v *VM) Use(b vmm.Backend, note string) {
	v.backend = b
	v.Backend = b.Name()
	v.Features = b.Features()
	v.AccelNote = note
}

func (v *VM) onClose(f func(context.Context) error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cleanups = append(v.cleanups, f)
}

// Close tears the VM down (LIFO, exactly once) and removes its directory.
func (v *VM) Close(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return v.closeErr
	}
	v.closed = true
	var errs []error
	for i := len(v.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, v.cleanups[i](ctx))
	}
	v.closeErr = errors.Join(errs...)
	return v.closeErr
}

func resolveEnvironment(_ context.Context, d Deps, c Config, v *VM) error {
	if !envstore.IsImage(c.Environment) {
		if _, err := catalog.Lookup(c.Environment); err != nil {
			return err
		}
	}
	env, err := d.Envs.Resolve(c.Environment, c.EnvironmentDigest)
	if err != nil {
		return err
	}
	v.Environment = env
	return nil
}

func prepareDir(_ context.Context, d Deps, _ Config, v *VM) error {
	if v.Dir != "" {
		return nil // the caller owns it
	}
	dir, err := vmdir.Open(d.Dirs.VMs(), v.ID)
	if err != nil {
		return err
	}
	if err := dir.Create(); err != nil {
		return fmt.Errorf("create vm directory: %w", err)
	}
	v.Dir = dir
	v.onClose(func(context.Context) error { return dir.Remove() })
	return nil
}

func buildInitramfs(_ context.Context, d Deps, _ Config, v *VM) error {
	if err := initramfs.CheckStatic(d.AgentBinary); err != nil {
		return err
	}
	p, err := initramfs.Build(d.Dirs.Cache(), d.AgentBinary, v.Environment.ModulePaths())
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	v.initrd = p
	return nil
}

func (v *VM) spec(c Config) vmm.Spec {
	return vmm.Spec{
		ID: v.ID, Dir: v.Dir,
		Kernel: v.Environment.KernelPath(), Initrd: v.initrd, RootDisk: v.Environment.RootfsPath(),
		VCPUs: c.VCPUs, MemMiB: c.MemMiB, Network: c.Network,
		WorkspaceDisk: c.WorkspaceDisk, WorkspaceBase: c.WorkspaceBase, TransferDisk: c.TransferDisk, WorkspaceChain: c.WorkspaceChain, MAC: MAC(v.ID), NetworkFile: v.netFile,
		Cmdline: v.cmdline(c), Transport: vmm.TransportVirtioSerial,
		RestoreState: v.warm.state,
		// A mounted-workspace snapshot's disks are the workspace's own
		// sizes (warm_mounted.go).
		RestoreSameDisks: v.warm.mounted,
		HugePages:        c.OneShot,
		Logger:           v.logger,
	}
}

// GuestCmdline is the guest kernel command line for c, the same for every
// backend: generic kernel words and the options pyro's guest init reads
// (internal/agent). Backends add only their machine's own words.
func GuestCmdline(c Config) []string {
	words := []string{"reboot=t", "panic=-1", "quiet", "cryptomgr.notests"}
	if c.Network {
		words = append(words, "pyro.net=1")
	}
	switch {
	case c.WorkspaceDisk != "" && c.WorkspaceBase != "":
		words = append(words, "pyro.workspace=2") // layered: both disks, overlaid
	case c.WorkspaceDisk != "":
		words = append(words, "pyro.workspace=1") // init waits for the second disk
	}
	return words
}

// chooseBackend takes the backend named by Config.Backend or
// $PYRO_BACKEND, else the registered backends in priority order: the first
// whose probe succeeds wins. A backend with weaker isolation (host-compat)
// is only taken when the caller allowed it, and its note says why the
// better ones could not run.
func chooseBackend(ctx context.Context, d Deps, c Config, v *VM) error {
	// A probe boots at most a bare guest: no network, no workspace disk.
	spec := v.spec(Config{VCPUs: c.VCPUs, MemMiB: c.MemMiB})
	spec.Network = c.Network // for the note of a backend that shares it
	in := vmm.ProbeInput{CacheDir: d.Dirs.Cache(), Spec: spec, FallbackAllowed: c.AllowHostCompat}
	name := c.Backend
	if name == "" {
		name = os.Getenv("PYRO_BACKEND")
	}
	var reasons []string
	if r, ok := vmm.Lookup(name); ok && (!r.WeakerIsolation || c.AllowHostCompat) {
		p, err := r.Probe(ctx, in)
		if err != nil {
			return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "backend %q (PYRO_BACKEND) cannot run here", name)
		}
		if r.WeakerIsolation {
			reasons = append(reasons, "PYRO_BACKEND="+name)
		}
		return use(d, v, r, p, reasons)
	}
	hint := "install qemu-system-x86 (`pyro doctor` checks the host), or pass --allow-host-compat (allow_host_compat) to run on the host in Linux namespaces, with weaker isolation"
	for _, r := range vmm.Registered() {
		if r.Explicit || (r.WeakerIsolation && !c.AllowHostCompat) {
			continue
		}
		p, err := r.Probe(ctx, in)
		if err == nil {
			return use(d, v, r, p, reasons)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var u *vmm.Unusable
		if errors.As(err, &u) {
			reasons = append(reasons, u.Reason)
		} else {
			reasons = append(reasons, fmt.Sprintf("%s: %v", r.Name, err))
		}
	}
	if len(reasons) == 0 {
		reasons = append(reasons, "no backend is registered")
	}
	return errdefs.New(errdefs.ErrUnavailable, hint, "no guest can boot on this host: %s", strings.Join(reasons, "; "))
}

// use adopts a probed backend; reasons are why better ones were passed over.
func use(d Deps, v *VM, r vmm.Registration, p vmm.Probed, reasons []string) error {
	note := p.Note
	if len(reasons) > 0 {
		note = strings.Join(append(reasons, p.Note), "; ")
	}
	v.Use(p.Backend, note)
	if r.WeakerIsolation {
		d.Logger.Warn("no guest can boot; using a weaker backend", "vm_id", v.ID, "backend", r.Name, "reason", strings.Join(reasons, "; "))
	}
	return nil
}

// checkFeatures refuses a backend that cannot enforce what the caller needs.
func checkFeatures(_ context.Context, _ Deps, c Config, v *VM) error {
	want, have := v.spec(c).Transport, v.Features.Transport
	if have == "" {
		have = vmm.TransportVirtioSerial
	}
	if want != have {
		return errdefs.New(errdefs.ErrFailedPrecondition, "", "backend %q provides the agent transport %q, the guest expects %q", v.Backend, have, want)
	}
	needs := c.Needs
	// Every networked guest is policed: a backend that cannot enforce a
	// policy gets no network at all.
	needs.NetworkPolicy = needs.NetworkPolicy || (c.Network && !slirpBench())
	if c.Network && !v.Features.NetworkPolicy && !slirpBench() {
		return errdefs.New(errdefs.ErrFailedPrecondition,
			"run it without --network (network policy off), or where QEMU can boot a VM (`pyro doctor`)",
			"backend %q has no network it can police, and a guest never gets the host's", v.Backend)
	}
	if missing := v.Features.Missing(needs); len(missing) > 0 {
		return errdefs.New(errdefs.ErrFailedPrecondition, "use a host where a backend that supports it can run (`pyro doctor`)",
			"backend %q cannot enforce %s", v.Backend, strings.Join(missing, ", "))
	}
	return nil
}

func startVMM(ctx context.Context, _ Deps, c Config, v *VM) error {
	return v.start(ctx, v.spec(c))
}

// start starts v's machine from spec (booted or restored) and stops it
// when v closes.
func (v *VM) start(ctx context.Context, spec vmm.Spec) error {
	m, err := v.backend.Start(ctx, spec)
	if err != nil {
		return err
	}
	v.Machine = m
	v.onClose(func(ctx context.Context) error {
		stopCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return m.Stop(stopCtx)
	})
	return nil
}

func connectAgent(ctx context.Context, _ Deps, c Config, v *VM) error {
	v.Agent = agentapi.NewClient(v.Machine.DialAgent)
	v.onClose(func(context.Context) error { return v.Agent.Close() })
	ctx, cancel := context.WithTimeout(ctx, c.BootTimeout)
	defer cancel()
	// Stop waiting the moment the VMM dies: its exit explains the failure.
	go func() {
		select {
		case <-v.Machine.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	h, err := v.Agent.WaitReady(ctx)
	if err == nil {
		v.Health = h
		return nil
	}
	select {
	case <-v.Machine.Done():
		return errdefs.New(errdefs.ErrUnavailable, "run `pyro doctor`; the guest console said the above",
			"guest exited during boot (%s): %s", qemuExit(v.Machine), consoleTail(v.Dir.Path(vmdir.ConsoleLog)))
	default:
	}
	if ctx.Err() == context.DeadlineExceeded {
		return errdefs.New(errdefs.ErrUnavailable, "run `pyro doctor`; a busy host boots TCG guests slowly",
			"guest agent did not answer within %s; console: %s", c.BootTimeout, consoleTail(v.Dir.Path(vmdir.ConsoleLog)))
	}
	return err
}

func consoleTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no console output"
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

func qemuExit(m vmm.Machine) string {
	if err := m.Err(); err != nil {
		return err.Error()
	}
	return "exit status 0"
}

// MAC derives a stable locally administered MAC address from a VM id.
func MAC(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}

// ValidateResources checks a VM's vCPU count and memory size.
func ValidateResources(vcpus, memMiB int) error {
	if vcpus < 1 || vcpus > 64 {
		return errdefs.New(errdefs.ErrInvalidArgument, "use 1 to 64", "vcpu_count %d out of range", vcpus)
	}
	if memMiB < 128 || memMiB > 65536 {
		return errdefs.New(errdefs.ErrInvalidArgument, "use 128 to 65536 MiB", "mem_mib %d out of range", memMiB)
	}
	return hostres.CheckRequest(vcpus, memMiB) // and within this host's cores and memory
}
