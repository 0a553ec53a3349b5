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

	"github.com/pyro-mcp/pyro/internal/errdefs"
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
	return vmm.Features{Isolation: "vm", Acceleration: b.accel}
}

// Args returns QEMU's command line for spec. File paths inside the VM
// directory are relative: QEMU runs with the directory as its cwd.
func (b *Backend) Args(spec vmm.Spec) []string {
	cmdline := append([]string{
		"console=ttyS0", "reboot=t", "panic=-1", "quiet", "cryptomgr.notests",
		// Without a known TSC rate, TCG guests sometimes spin forever
		// calibrating the clock (NOTES-guest.md).
		"tsc_early_khz=" + strconv.Itoa(hostTSCkHz()),
	}, spec.Cmdline...)
	if spec.Network {
		cmdline = append(cmdline, "pyro.net=1")
	}
	if spec.WorkspaceDisk != "" {
		cmdline = append(cmdline, "pyro.workspace=1") // init waits for /dev/vdb
	}
	args := []string{
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
		"-accel", b.accel,
		"-m", strconv.Itoa(spec.MemMiB),
		"-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + vmdir.ConsoleLog,
		"-qmp", "unix:" + vmdir.QMPSock + ",server=on,wait=off",
		"-kernel", spec.Kernel,
		"-initrd", spec.Initrd,
		"-append", strings.Join(cmdline, " "),
		"-drive", "id=root,file=" + spec.RootDisk + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + vmdir.AgentSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + AgentPortName,
	}
	if spec.WorkspaceDisk != "" {
		args = append(args,
			"-drive", "id=workspace,file="+spec.WorkspaceDisk+",format=raw,if=none,cache=writeback,discard=unmap",
			"-device", "virtio-blk-device,drive=workspace")
	}
	if spec.Network {
		// User-mode networking: outbound only, nothing listens on the host.
		nic := "virtio-net-device,netdev=net0"
		if spec.MAC != "" {
			nic += ",mac=" + spec.MAC
		}
		args = append(args, "-netdev", "user,id=net0", "-device", nic)
	}
	return args
}

// Start launches QEMU for spec.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	cmd := exec.Command(b.binary, b.Args(spec)...)
	cmd.Dir = string(spec.Dir)
	stderr, err := os.Create(spec.Dir.Path("vmm.log"))
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stderr, stderr
	m, err := vmm.StartMachine(cmd, spec.Dir, "vmm.log", "qemu")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "check `pyro doctor`", "start qemu")
	}
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
