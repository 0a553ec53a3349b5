// Package hostcompat is the host-compat backend: when no guest can boot and
// the operator allowed it, the guest agent runs on the host itself. It is
// a real sandbox, weaker than a VM only in that it shares the host kernel:
//
//   - namespaces: mount, PID, UTS, IPC, cgroup and always its own network
//     namespace with only lo (no network: a requested one is refused);
//   - a user namespace mapping the sandbox's root to an unprivileged host
//     id range (idmap_linux.go), with the images mounted idmapped;
//   - no capabilities at all for the agent and the commands (bounding,
//     inheritable, permitted, effective and ambient sets empty, securebits
//     locked), no_new_privs, and a seccomp filter (seccomp_linux.go);
//   - a cgroup enforcing mem_mib, vcpu_count and a pids limit
//     (cgroup_linux.go), and sized tmpfs mounts.
//
// The sandbox is the pyro binary itself, re-executed with HiddenArg (see
// Main), in three steps:
//
//	init     host root, new mount and PID namespaces: joins the cgroup,
//	         mounts the images (loop devices and idmapped mounts need host
//	         privileges), the overlay root and the agent socket, starts
//	         the sandbox and forwards signals to it.
//	sandbox  PID 1 inside every new namespace, root of the user
//	         namespace: mounts /proc, /sys, /dev..., pivots into the root,
//	         starts the agent and reaps orphans.
//	serve    drops every privilege (confine) and execs the agent server.
package hostcompat

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/caplog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// HiddenArg is os.Args[1] of the sandbox processes; cmd/pyro dispatches it
// to Main before anything else (the sandbox's init is PID 1 in its PID
// namespace and must not be taken for the guest's /init).
const HiddenArg = "__pyro-hostcompat"

// Roles after HiddenArg.
const (
	roleInit    = "init"    // host side of the sandbox: mounts, cgroup, signals
	roleHold    = "hold"    // keeps a user namespace alive for idmapped mounts
	roleSandbox = "sandbox" // PID 1 inside the namespaces: reaps orphans
	roleServe   = "serve"   // drops privileges, then execs roleAgent
	roleAgent   = "agent"   // the agent server
)

// stagingDir is the directory in the VM directory where the sandbox mounts
// its private tmpfs (visible only inside its own mount namespace).
const stagingDir = "hostcompat-root"

// sandboxPath is the PATH the sandbox processes start with.
const sandboxPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Defaults for a spec that leaves the sizes out (the VM layer always sets
// them).
const (
	defaultMemMiB = 1024
	defaultVCPUs  = 1
)

// config is what the host hands the sandbox init on its command line.
type config struct {
	Dir       string   `json:"dir"`                 // VM directory (absolute)
	Rootfs    string   `json:"rootfs"`              // read-only ext4 root image
	Workspace string   `json:"workspace,omitempty"` // read-write ext4 image for /workspace
	Hostname  string   `json:"hostname"`
	MemMiB    int      `json:"mem_mib"` // sizes the tmpfs mounts
	Cgroup    []string `json:"cgroup"`  // directories to join (one per hierarchy)
	IDs       idRange  `json:"ids"`
}

// sandboxConfig is what the init hands the sandbox's PID 1. It holds no
// host path: the root comes as an open directory.
type sandboxConfig struct {
	Hostname string `json:"hostname"`
	MemMiB   int    `json:"mem_mib"`
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
func Note(vmm.Spec) string {
	return "user namespace, no capabilities, seccomp, cgroup limits, no network"
}

func configFor(spec vmm.Spec) config {
	root := spec.Rootfs
	if root == "" {
		root = spec.RootDisk
	}
	mem := spec.MemMiB
	if mem <= 0 {
		mem = defaultMemMiB
	}
	return config{
		Dir: string(spec.Dir), Rootfs: root, Workspace: spec.WorkspaceDisk,
		Hostname: "pyro", MemMiB: mem,
	}
}

func limitsFor(spec vmm.Spec) limits {
	l := limits{MemMiB: spec.MemMiB, VCPUs: spec.VCPUs, Pids: pidsMax}
	if l.MemMiB <= 0 {
		l.MemMiB = defaultMemMiB
	}
	if l.VCPUs <= 0 {
		l.VCPUs = defaultVCPUs
	}
	return l
}

// Args returns the sandbox init's arguments (after the program name).
func Args(cfg config) ([]string, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return []string{HiddenArg, roleInit, string(b)}, nil
}

// Cloneflags are the namespaces the sandbox init is created in; the
// sandbox proper adds the user, UTS, IPC, network and cgroup namespaces
// (sandboxCloneflags).
const Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID

// sandboxCloneflags are the namespaces of the sandbox's PID 1.
const sandboxCloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID |
	syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET | syscall.CLONE_NEWCGROUP

// Start starts the sandbox for spec. Its init writes its diagnostics to the
// VM directory's console log.
func (b *Backend) Start(_ context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if spec.Dir == "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "host-compat: no VM directory")
	}
	// The sandbox's network namespace has only lo: host-compat cannot
	// attach pyro's policed network stack (Features().NetworkPolicy is
	// false), and the host's own namespace is never an option. Refusing is
	// clearer than silently running offline.
	if spec.Network {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition,
			"use --network-policy off (network=false), or install qemu-system-x86 so a VM can boot with a policed network",
			"host-compat cannot enforce a network policy: the sandbox gets its own network namespace with only loopback")
	}
	if os.Geteuid() != 0 {
		return nil, errdefs.New(errdefs.ErrUnavailable, "run pyro as root, or install qemu-system-x86", "host-compat needs root (namespaces, loop devices, mounts, cgroups)")
	}
	if _, err := filterProgram(); err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "install qemu-system-x86", "host-compat")
	}
	cfg := configFor(spec)
	if _, err := os.Stat(cfg.Rootfs); err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "reinstall the environment with `pyro env pull`", "host-compat: root image")
	}
	id := spec.ID
	if id == "" {
		id = filepath.Base(string(spec.Dir))
	}
	cg, err := createCgroup(id, limitsFor(spec))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "host-compat needs cgroup v2 (or the v1 memory, pids and cpu controllers) mounted at "+cgroupRoot, "host-compat cgroup")
	}
	cfg.Cgroup, cfg.IDs = cg.Dirs, sandboxIDs()
	m, err := start(spec, cfg)
	if err != nil {
		_ = cg.remove()
		return nil, err
	}
	return newMachine(m, cg), nil
}

func start(spec vmm.Spec, cfg config) (vmm.Machine, error) {
	args, err := Args(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = "pyro"
	cmd.Dir = string(spec.Dir)
	cmd.Env = []string{sandboxPath}
	// The sandbox's output is capped like a VM's serial console: what runs
	// inside is untrusted and must not fill the host's disk.
	log, err := caplog.Open(spec.Dir.Path(vmdir.ConsoleLog), hostres.Load().ConsoleLogBytes)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	// Its own session: started by `pyro run` in a terminal, the sandbox
	// would otherwise share that terminal as its controlling tty, and a
	// command could open /dev/tty and type into the user's shell (TIOCSTI).
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: Cloneflags, Setsid: true}
	m, err := vmm.StartMachine(cmd, spec.Dir, vmdir.ConsoleLog, "host-compat sandbox")
	if err != nil {
		log.Close()
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "host-compat needs root and a kernel with user, PID and mount namespaces", "start host-compat sandbox")
	}
	vmm.CloseOnExit(m, log)
	return m, nil
}

// machine is a running sandbox; its cgroup goes away once the sandbox has
// exited.
type machine struct {
	vmm.Machine
	removed chan struct{}
}

func newMachine(m vmm.Machine, cg *cgroup) *machine {
	hm := &machine{Machine: m, removed: make(chan struct{})}
	go func() {
		<-m.Done()
		if err := cg.remove(); err != nil {
			fmt.Fprintf(os.Stderr, "pyro: host-compat: %v\n", err)
		}
		close(hm.removed)
	}()
	return hm
}

// Stop stops the sandbox and waits (as long as ctx allows) for its cgroup
// to be removed.
func (m *machine) Stop(ctx context.Context) error {
	err := m.Machine.Stop(ctx)
	select {
	case <-m.removed:
	case <-ctx.Done():
	}
	return err
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
	if len(c.Cgroup) == 0 {
		return c, fmt.Errorf("sandbox config lacks a cgroup")
	}
	if c.IDs.UIDBase == 0 || c.IDs.GIDBase == 0 || c.IDs.Count == 0 {
		return c, fmt.Errorf("sandbox config lacks an unprivileged id range")
	}
	if c.MemMiB <= 0 {
		c.MemMiB = defaultMemMiB
	}
	if c.Hostname == "" {
		c.Hostname = "pyro"
	}
	return c, nil
}
