// Package qemu is the QEMU backend: a -M microvm guest booted PVH from an
// uncompressed vmlinux, virtio-mmio block/serial/net devices, KVM when the
// host really supports it and TCG otherwise.
package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/caplog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// AgentPortName is the virtio-serial port name the guest agent looks for.
const AgentPortName = "org.pyro.agent"

// Binary returns the QEMU binary: $PYRO_QEMU, else qemu-system-x86_64 on PATH.
func Binary() (string, error) {
	name := os.Getenv("PYRO_QEMU")
	if name == "" {
		name = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrUnavailable, err, "install it with `apt-get install qemu-system-x86`", "qemu binary %q not found", name)
	}
	return p, nil
}

// Backend boots guests with QEMU.
type Backend struct {
	binary string
	accel  string // "kvm" or "tcg"
}

var _ vmm.Backend = (*Backend)(nil)

// New returns a QEMU backend using the given binary and accelerator.
func New(binary, accel string) *Backend { return &Backend{binary: binary, accel: accel} }

func (b *Backend) Name() string { return "qemu" }

func (b *Backend) Features() vmm.Features {
	// The guest's NIC is attached to pyro's network stack (netstack).
	return vmm.Features{Isolation: "vm", Acceleration: b.accel, NetworkPolicy: true, MemorySnapshot: true}
}

// Start launches QEMU for spec, once the host's memory can hold it.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	clock := newStepClock(ctx, spec.Logger)
	logCap := hostres.Load().ConsoleLogBytes
	console, err := caplog.Open(spec.Dir.Path(vmdir.ConsoleLog), logCap)
	if err != nil {
		return nil, err
	}
	cmd, cleanup, err := b.Command(spec, console)
	if err != nil {
		console.Close()
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "check `pyro doctor`", "prepare qemu")
	}
	defer cleanup()
	clock.mark("files")
	stderr, err := caplog.Open(spec.Dir.Path(vmmLog), logCap)
	if err != nil {
		console.Close()
		return nil, err
	}
	cmd.Stderr = stderr
	m, err := b.admitAndStart(ctx, cmd, spec, clock)
	if err != nil {
		console.Close()
		stderr.Close()
		return nil, err
	}
	vmm.CloseOnExit(m, console, stderr)
	if spec.RestoreState != "" {
		if err := restore(ctx, spec, m, clock); err != nil {
			stopCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = m.Stop(stopCtx)
			cancel()
			if m.Err() != nil {
				err = fmt.Errorf("%w (qemu: %s)", err, fsutil.LastLines(spec.Dir.Path(vmmLog), 3))
			}
			return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "restore guest from its memory snapshot")
		}
	}
	if clock != nil {
		spec.Logger.Debug("vmm started", "vm_id", spec.ID, "restore", spec.RestoreState != "", "ms", clock.String())
	}
	return m, nil
}

// vmmLog is QEMU's own stderr in the VM directory.
const vmmLog = "vmm.log"

// admitAndStart starts cmd if the host's memory can hold spec's guest next
// to the running ones. The check and the start happen under a lock on the
// QEMU binary (any user can take it, and every pyro on the host shares
// it), so two guests starting at once cannot both take the last memory.
// The wait for the lock ends with ctx (a start stuck under it holds no
// other start forever).
func (b *Backend) admitAndStart(ctx context.Context, cmd *exec.Cmd, spec vmm.Spec, clock *stepClock) (vmm.Machine, error) {
	if f, err := os.Open(b.binary); err == nil {
		defer f.Close()
		if err := fsutil.LockContext(ctx, f); err != nil {
			if ctx.Err() != nil {
				return nil, errdefs.Wrap(errdefs.ErrUnavailable, err,
					"other guests are still starting on this host: retry, or allow this start more time",
					"wait for the host's guest start lock")
			}
		} else {
			defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
		}
	}
	clock.mark("lock")
	if h, err := hostres.Observe(); err == nil {
		if err := h.Admit(spec.MemMiB); err != nil {
			return nil, err
		}
	}
	clock.mark("admit")
	var m vmm.Machine
	err := startWithHugePages(spec.HugePages, func() (err error) { // hugepages.go
		m, err = vmm.StartMachine(cmd, spec.Dir, vmmLog, "qemu")
		return err
	})
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "check `pyro doctor`", "start qemu")
	}
	clock.mark("exec")
	return m, nil
}

var (
	tscOnce sync.Once
	tscKHz  int
)

// hostTSCkHz reads the host's "cpu MHz" once; 2 GHz if it cannot be read.
func hostTSCkHz() int {
	tscOnce.Do(func() {
		tscKHz = 2000000
		f, err := os.Open("/proc/cpuinfo")
		if err != nil {
			return
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			k, v, ok := strings.Cut(s.Text(), ":")
			if ok && strings.TrimSpace(k) == "cpu MHz" {
				if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
					tscKHz = int(mhz * 1000)
				}
				return
			}
		}
	})
	return tscKHz
}

// Version returns QEMU's version line, e.g. "QEMU emulator version 7.2.15".
func Version(ctx context.Context, binary string) (string, error) {
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}
