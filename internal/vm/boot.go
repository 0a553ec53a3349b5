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
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/initramfs"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/hostcompat"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
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
	ID              string
	Dir             vmdir.Dir
	Environment     string
	VCPUs           int
	MemMiB          int
	Network         bool
	AllowHostCompat bool
	// WorkspaceDisk is an ext4 image attached read-write as the guest's
	// /workspace (second disk); empty for none.
	WorkspaceDisk string
	// BootTimeout bounds the wait for the guest agent (default 90 s: TCG
	// guests on a busy 2-core host can take several seconds).
	BootTimeout time.Duration
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

	initrd   string
	backend  vmm.Backend
	mu       sync.Mutex
	cleanups []func(context.Context) error
	closed   bool
	closeErr error
}

type step struct {
	name string
	run  func(ctx context.Context, d Deps, c Config, v *VM) error
}

// coldBoot is the list of steps from nothing to a guest agent that answers.
var coldBoot = []step{
	{"resolve environment", resolveEnvironment},
	{"prepare directory", prepareDir},
	{"build initramfs", buildInitramfs},
	{"choose backend", chooseBackend},
	{"start vmm", startVMM},
	{"connect agent", connectAgent},
}

// Boot runs the cold-boot steps. On failure everything already set up is
// torn down before it returns.
func Boot(ctx context.Context, d Deps, c Config) (*VM, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 90 * time.Second
	}
	if err := ValidateResources(c.VCPUs, c.MemMiB); err != nil {
		return nil, err
	}
	v := &VM{ID: c.ID, Dir: c.Dir}
	if v.ID == "" {
		v.ID = vmdir.NewID()
	}
	start := time.Now()
	for _, s := range coldBoot {
		t := time.Now()
		if err := s.run(ctx, d, c, v); err != nil {
			cerr := v.Close(context.Background())
			if ctx.Err() != nil && !errors.Is(err, errdefs.ErrUnavailable) {
				err = fmt.Errorf("%s: %w", s.name, ctx.Err())
			}
			return nil, errors.Join(err, cerr)
		}
		d.Logger.Debug("boot step", "vm_id", v.ID, "step", s.name, "ms", time.Since(t).Milliseconds())
	}
	v.BootMS = time.Since(start).Milliseconds()
	return v, nil
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
	if _, err := catalog.Lookup(c.Environment); err != nil {
		return err
	}
	env, err := d.Envs.Get(c.Environment)
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
		WorkspaceDisk: c.WorkspaceDisk, MAC: MAC(v.ID),
	}
}

// chooseBackend prefers QEMU with KVM, then QEMU with TCG, and falls back to
// host-compat only when the caller allowed it (PYRO_BACKEND=host forces that
// fallback, for tests).
func chooseBackend(ctx context.Context, d Deps, c Config, v *VM) error {
	bin, err := qemu.Binary()
	if err == nil && c.AllowHostCompat {
		// A binary that cannot even run (missing libraries, wrong
		// architecture) is as good as none when a fallback is allowed.
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, verr := qemu.Version(vctx, bin); verr != nil && ctx.Err() == nil {
			err = errdefs.Wrap(errdefs.ErrUnavailable, verr, "", "qemu cannot run")
		}
		cancel()
	}
	if err == nil && c.AllowHostCompat && os.Getenv("PYRO_BACKEND") == "host" {
		err = errors.New("PYRO_BACKEND=host")
	}
	if err != nil {
		reason, _, _ := strings.Cut(err.Error(), " (hint:")
		if !c.AllowHostCompat {
			return errdefs.New(errdefs.ErrUnavailable,
				"install qemu-system-x86 (`pyro doctor` checks the host), or pass --allow-host-compat (allow_host_compat) to run on the host in Linux namespaces, with weaker isolation",
				"no guest can boot on this host: %s", reason)
		}
		v.backend = hostcompat.New()
		v.Backend = v.backend.Name()
		v.Features = v.backend.Features()
		v.AccelNote = fmt.Sprintf("%s; running on the host in Linux namespaces (%s)", reason, hostcompat.Note(v.spec(c)))
		d.Logger.Warn("no guest can boot; using host-compat", "vm_id", v.ID, "reason", reason)
		return nil
	}
	verdict := qemu.ProbeKVM(ctx, d.Dirs.Cache(), bin, v.spec(c))
	accel := "tcg"
	if verdict.Usable {
		accel = "kvm"
	}
	v.AccelNote = verdict.Reason
	v.backend = qemu.New(bin, accel)
	v.Backend = v.backend.Name()
	v.Features = v.backend.Features()
	return nil
}

func startVMM(ctx context.Context, _ Deps, c Config, v *VM) error {
	m, err := v.backend.Start(ctx, v.spec(c))
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
	return nil
}
