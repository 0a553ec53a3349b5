// Package hostcompat is the host-compat backend: when no guest can boot and
// the caller allowed it, the guest agent runs on the host itself, inside new
// mount, PID, UTS, IPC (and, without networking, network) namespaces, with
// the environment's ext4 root image (read-only, under a tmpfs overlay) as
// its root filesystem. Isolation is weaker than a VM: same kernel, real root
// (with a reduced capability bounding set).
//
// The sandbox is the pyro binary itself, re-executed with HiddenArg (see
// Main): PID 1 of the new PID namespace sets up the root, listens on the VM
// directory's agent socket, pivots into the root and starts the agent server
// as its child, then only reaps orphans.
package hostcompat

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// HiddenArg is os.Args[1] of the sandbox processes; cmd/pyro dispatches it
// to Main before anything else (the sandbox's init is PID 1 in its PID
// namespace and must not be taken for the guest's /init).
const HiddenArg = "__pyro-hostcompat"

// Roles after HiddenArg.
const (
	roleInit  = "init"  // PID 1: set up the root, reap orphans
	roleServe = "serve" // the agent server, child of PID 1
)

// stagingDir is the directory in the VM directory where the sandbox mounts
// its private tmpfs (visible only inside its own mount namespace).
const stagingDir = "hostcompat-root"

// sandboxPath is the PATH the sandbox processes start with.
const sandboxPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// config is what the host hands the sandbox init on its command line.
type config struct {
	Dir       string `json:"dir"`                 // VM directory (absolute)
	Rootfs    string `json:"rootfs"`              // read-only ext4 root image
	Workspace string `json:"workspace,omitempty"` // read-write ext4 image for /workspace
	Network   bool   `json:"network"`             // share the host network namespace
	Hostname  string `json:"hostname"`
}

// Backend runs guests as host-compat sandboxes.
type Backend struct{}

var _ vmm.Backend = (*Backend)(nil)

// New returns the host-compat backend.
func New() *Backend { return &Backend{} }

func (b *Backend) Name() string { return "host" }

func (b *Backend) Features() vmm.Features {
	return vmm.Features{Isolation: "namespaces", Acceleration: "none"}
}

// Note is a one-line description of the isolation a spec gets, for results.
func Note(spec vmm.Spec) string {
	if spec.Network {
		return "sharing the host network namespace"
	}
	return "no network"
}

func configFor(spec vmm.Spec) config {
	root := spec.Rootfs
	if root == "" {
		root = spec.RootDisk
	}
	return config{
		Dir: string(spec.Dir), Rootfs: root, Workspace: spec.WorkspaceDisk,
		Network: spec.Network, Hostname: "pyro",
	}
}

// Args returns the sandbox init's arguments (after the program name).
func Args(spec vmm.Spec) ([]string, error) {
	b, err := json.Marshal(configFor(spec))
	if err != nil {
		return nil, err
	}
	return []string{HiddenArg, roleInit, string(b)}, nil
}

// Cloneflags returns the namespaces a sandbox for spec is created in: the
// network namespace is shared with the host only when spec asks for a
// network.
func Cloneflags(spec vmm.Spec) uintptr {
	f := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if !spec.Network {
		f |= syscall.CLONE_NEWNET
	}
	return f
}

// Start starts the sandbox for spec. Its init writes its diagnostics to the
// VM directory's console log.
func (b *Backend) Start(_ context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if spec.Dir == "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "host-compat: no VM directory")
	}
	if os.Geteuid() != 0 {
		return nil, errdefs.New(errdefs.ErrUnavailable, "run pyro as root, or install qemu-system-x86", "host-compat needs root (namespaces, loop devices, mounts)")
	}
	cfg := configFor(spec)
	if _, err := os.Stat(cfg.Rootfs); err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "reinstall the environment with `pyro env pull`", "host-compat: root image")
	}
	args, err := Args(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = "pyro"
	cmd.Dir = string(spec.Dir)
	cmd.Env = []string{sandboxPath}
	log, err := os.OpenFile(spec.Dir.Path(vmdir.ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: Cloneflags(spec)}
	m, err := vmm.StartMachine(cmd, spec.Dir, vmdir.ConsoleLog, "host-compat sandbox")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "host-compat needs root and a kernel with user, PID and mount namespaces", "start host-compat sandbox")
	}
	return m, nil
}

// parseConfig decodes the init's configuration argument.
func parseConfig(s string) (config, error) {
	var c config
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return c, fmt.Errorf("decode sandbox config: %w", err)
	}
	if c.Dir == "" || c.Rootfs == "" {
		return c, fmt.Errorf("sandbox config lacks dir or rootfs")
	}
	if c.Hostname == "" {
		c.Hostname = "pyro"
	}
	return c, nil
}
