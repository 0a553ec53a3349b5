package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// How QEMU is confined on the host (issue #12.12):
//
//   - -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny:
//     QEMU's own seccomp filter, installed while it parses its options.
//   - a scrubbed environment (Env): nothing of pyro's, no PYRO_MCP_TOKEN.
//   - when pyro runs as root, QEMU runs as an unprivileged account
//     (PYRO_QEMU_USER, default "nobody").
//
// QEMU's own -runas cannot be used: QEMU installs the seccomp filter before
// it drops privileges, so elevateprivileges=deny kills it (SIGSYS) at its own
// setgid; and the kernel clears the parent-death signal when a process
// changes its credentials, so a -runas QEMU would outlive a killed
// supervisor. Instead pyro starts QEMU already unprivileged (Go sets the
// credentials, then the parent-death signal, before exec) and hands it
// every file pre-opened: disks through -add-fd/fdset, the kernel and
// initramfs through /proc/self/fd (a re-open that skips the path, so it
// needs only the file's own read permission), the agent and QMP sockets as
// listening descriptors, the console through stdout. QEMU thus needs no
// access to the state directory at all, and its working directory is "/".

// SandboxOptions is QEMU's -sandbox value: its seccomp filter denies
// obsolete system calls, privilege changes, spawning processes and
// resource-control calls.
const SandboxOptions = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// CheckSandbox asks binary whether it accepts SandboxOptions (a QEMU built
// without libseccomp refuses -sandbox); -version makes it exit at once.
func CheckSandbox(ctx context.Context, binary string) error {
	out, err := exec.CommandContext(ctx, binary, "-sandbox", SandboxOptions, "-version").CombinedOutput()
	if err != nil {
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("%s refuses -sandbox %s: %s", binary, SandboxOptions, line)
	}
	return nil
}

// Descriptor numbers of the files handed to QEMU (ExtraFiles start at 3).
const (
	fdKernel = 3 + iota
	fdInitrd
	fdRoot
	fdAgent
	fdQMP
	fdWorkspace   // only when the spec has a workspace disk: read-write
	fdWorkspaceRO // and read-only, for QEMU's first (auto-read-only) open
	fdBase        // only with a layered workspace: its baseline, read-only
	fdTransfer    // only with a layered workspace's transfer disk: read-only
)

// fdset ids for the disks (-add-fd set=N, file=/dev/fdset/N).
const (
	fdsetRoot      = 1
	fdsetWorkspace = 2
	fdsetBase      = 3
	fdsetTransfer  = 4
)

// Env is QEMU's whole environment: enough to run, nothing of the caller's.
func Env() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
}

// Account is the unprivileged identity QEMU runs as.
type Account struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, e.g. /dev/kvm's
}

// Privileges says who QEMU runs as and why.
type Privileges struct {
	Drop   *Account // nil: QEMU runs as pyro's own user
	Reason string   // why it does or does not drop, for doctor and errors
}

// UserEnv names the account QEMU runs as when pyro runs as root;
// "root" keeps QEMU as root.
const UserEnv = "PYRO_QEMU_USER"

// ChoosePrivileges decides who QEMU runs as for a guest booting kernel and
// initrd under accel. It drops only when pyro is root, the account exists,
// and the files QEMU must open by path (kernel, initramfs, /dev/kvm under
// KVM) allow that account in.
func ChoosePrivileges(accel, kernel, initrd string) Privileges {
	if os.Geteuid() != 0 {
		return Privileges{Reason: "pyro does not run as root; qemu runs as the same user"}
	}
	name := os.Getenv(UserEnv)
	if name == "" {
		name = "nobody"
	}
	if name == "root" {
		return Privileges{Reason: UserEnv + "=root keeps qemu as root"}
	}
	u, err := user.Lookup(name)
	if err != nil {
		return Privileges{Reason: fmt.Sprintf("no user %q to run qemu as (set %s)", name, UserEnv)}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return Privileges{Reason: fmt.Sprintf("user %q is not an unprivileged account", name)}
	}
	acct := &Account{Name: name, UID: uint32(uid), GID: uint32(gid)}
	for _, f := range []string{kernel, initrd} {
		if f == "" {
			continue
		}
		if ok, why := readableBy(f, acct); !ok {
			return Privileges{Reason: why + "; qemu runs as root"}
		}
	}
	if accel == "kvm" {
		g, why := kvmGroup(acct)
		if why != "" {
			return Privileges{Reason: why + "; qemu runs as root"}
		}
		if g != 0 {
			acct.Groups = append(acct.Groups, g)
		}
	}
	return Privileges{Drop: acct, Reason: fmt.Sprintf("qemu runs as %s (uid %d)", name, uid)}
}

// readableBy reports whether acct may read path by its mode bits alone (the
// path itself is re-opened through /proc/self/fd, so directories above it
// do not matter).
func readableBy(path string, acct *Account) (bool, string) {
	st, err := os.Stat(path)
	if err != nil {
		return false, err.Error()
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return false, "cannot read the owner of " + path
	}
	m := st.Mode().Perm()
	if m&0o004 != 0 || (sys.Uid == acct.UID && m&0o400 != 0) || (sys.Gid == acct.GID && m&0o040 != 0) {
		return true, ""
	}
	return false, fmt.Sprintf("%s (mode %o) is not readable by %s", path, m, acct.Name)
}

// kvmGroup returns the group that opens /dev/kvm for acct (0 when the node
// is open to everyone), or why none does. QEMU opens /dev/kvm by path, so
// it cannot be handed over; root's own group is never lent.
func kvmGroup(acct *Account) (uint32, string) {
	st, err := os.Stat("/dev/kvm")
	if err != nil {
		return 0, "/dev/kvm: " + err.Error()
	}
	sys := st.Sys().(*syscall.Stat_t)
	m := st.Mode().Perm()
	switch {
	case m&0o006 == 0o006:
		return 0, ""
	case m&0o060 == 0o060 && sys.Gid != 0:
		return sys.Gid, ""
	}
	return 0, fmt.Sprintf("/dev/kvm (mode %o, gid %d) is open to root only", m, sys.Gid)
}

// Args returns QEMU's command line for spec, with every file given as the
// descriptors of the layout above.
func (b *Backend) Args(spec vmm.Spec) []string {
	// The guest's own words come from above (spec.Cmdline, vm.GuestCmdline);
	// these are this machine's: its serial console and a clock hint.
	cmdline := append([]string{
		"console=ttyS0",
		// Without a known TSC rate, TCG guests sometimes spin forever
		// calibrating the clock (NOTES-guest.md).
		"tsc_early_khz=" + strconv.Itoa(hostTSCkHz()),
	}, spec.Cmdline...)
	fd := func(n int) string { return strconv.Itoa(n) }
	machine := "microvm,x-option-roms=off,isa-serial=on,rtc=on"
	args := []string{
		"-sandbox", SandboxOptions,
		"-name", spec.Dir.VMMName(),
		"-M", machine,
		"-accel", b.accel,
		"-m", strconv.Itoa(spec.MemMiB),
		"-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// The console goes to stdout, read by pyro under a size cap.
		"-serial", "stdio",
		"-chardev", "socket,id=qmp,fd=" + fd(fdQMP) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-kernel", "/proc/self/fd/" + fd(fdKernel),
		"-initrd", "/proc/self/fd/" + fd(fdInitrd),
		"-append", strings.Join(cmdline, " "),
		"-add-fd", fmt.Sprintf("fd=%d,set=%d", fdRoot, fdsetRoot),
		"-drive", fmt.Sprintf("id=root,file=/dev/fdset/%d,format=raw,if=none,readonly=on", fdsetRoot),
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,fd=" + fd(fdAgent) + ",server=on,wait=off",
		// The id makes QEMU report the guest opening and closing the port
		// (VSERPORT_CHANGE), which Save waits for.
		"-device", "virtserialport,id=" + agentPortID + ",chardev=agent,name=" + AgentPortName,
	}
	if spec.WorkspaceDisk != "" {
		args = append(args, workspaceDrive(spec)...) // blocklayers.go
		if spec.WorkspaceBase != "" {
			args = append(args,
				"-add-fd", fmt.Sprintf("fd=%d,set=%d", fdBase, fdsetBase),
				"-drive", fmt.Sprintf("id=wsbase,file=/dev/fdset/%d,format=raw,if=none,readonly=on", fdsetBase),
				"-device", "virtio-blk-device,drive=wsbase")
			if spec.TransferDisk != "" {
				// The host writes it, the guest only reads it (/dev/vdd,
				// internal/agent/pushdisk.go).
				args = append(args,
					"-add-fd", fmt.Sprintf("fd=%d,set=%d", fdTransfer, fdsetTransfer),
					"-drive", fmt.Sprintf("id=wstransfer,file=/dev/fdset/%d,format=raw,if=none,readonly=on", fdsetTransfer),
					"-device", "virtio-blk-device,drive=wstransfer")
			}
		}
	}
	if spec.Network {
		nic := "virtio-net-device,netdev=net0"
		if spec.MAC != "" {
			nic += ",mac=" + spec.MAC
		}
		// The NIC's frames go to pyro's userspace network stack over the
		// stream socket handed in as a descriptor; QEMU's slirp (which
		// lets a guest reach the host's loopback) only for the benchmark.
		netdev := "stream,id=net0,server=off,addr.type=fd,addr.str=" + fd(netFD(spec))
		if spec.NetworkFile == nil {
			netdev = "user,id=net0,restrict=off"
		}
		args = append(args, "-netdev", netdev, "-device", nic)
	}
	if spec.RestoreState != "" {
		// Guest RAM and device state come from a read-only descriptor
		// handed over at exec (fdState), so QEMU never opens a path for
		// it and never holds a writable handle on a snapshot. (QEMU 7.2
		// opens a memory-backend-file read-write even with share=off, so
		// mapping a shared RAM file would hand every restored QEMU the
		// power to rewrite what later restores load.) On the command
		// line, the load begins as soon as the machine exists: no QMP
		// round trip (getfd, migrate-incoming) comes before it.
		args = append(args, "-incoming", "fd:"+fd(fdState(spec)))
		if spec.RestoreRAM != "" {
			// Main RAM mapped from the saved RAM file, privately
			// (forkram.go): the default memory backend, so its block
			// keeps the name the saved stream uses.
			args = append(args, "-mem-path", "/proc/self/fd/"+fd(fdRAM(spec)))
		}
	}
	return args
}

// fdRAM is the descriptor of spec.RestoreRAM: after a layer chain's
// lower layers (fdChain).
func fdRAM(spec vmm.Spec) int {
	return fdChain(spec) + max(0, len(spec.WorkspaceChain)-1)
}

// fdState is the descriptor of a restore's state file: the last one,
// after the RAM file when there is one (fdRAM).
func fdState(spec vmm.Spec) int {
	if spec.RestoreRAM != "" {
		return fdRAM(spec) + 1
	}
	return fdRAM(spec)
}

// netFD is the descriptor of spec.NetworkFile: the one after the disks.
func netFD(spec vmm.Spec) int {
	if spec.WorkspaceDisk != "" && spec.WorkspaceBase != "" && spec.TransferDisk != "" {
		return fdTransfer + 1 // a layered workspace's baseline and transfer disk come first
	}
	if spec.WorkspaceDisk != "" && spec.WorkspaceBase != "" {
		return fdBase + 1 // a layered workspace's baseline comes first
	}
	if spec.WorkspaceDisk != "" {
		return fdWorkspaceRO + 1
	}
	return fdWorkspace
}

// SlirpEnv, set to 1, gives a networked guest QEMU's own user networking
// instead of pyro's stack. It exists only so scripts/bench-network.sh can
// measure today's slirp beside the stack in the same run: slirp decides
// nothing (the guest reaches the host's loopback at 10.0.2.2), so nothing
// else sets it.
const SlirpEnv = "PYRO_BENCH_SLIRP"

// agentPortID is the agent port's device id.
const agentPortID = "agentport"

// Command prepares QEMU for spec: the files opened, the sockets bound in
// spec.Dir, the credentials chosen. Call cleanup once the command started
// (or failed to): pyro's copies of the descriptors are then closed and the
// console writer is left to the command. console receives the guest's
// serial output.
func (b *Backend) Command(spec vmm.Spec, console io.Writer) (cmd *exec.Cmd, cleanup func(), err error) {
	var files []*os.File
	cleanup = func() {
		for _, f := range files {
			f.Close()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	open := func(path string, flag int) error {
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	}
	listen := func(name string) error {
		f, err := listenFile(spec.Dir.Path(name))
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	}
	if err = open(spec.Kernel, os.O_RDONLY); err != nil {
		return nil, nil, err
	}
	if err = open(spec.Initrd, os.O_RDONLY); err != nil {
		return nil, nil, err
	}
	if err = open(spec.RootDisk, os.O_RDONLY); err != nil {
		return nil, nil, err
	}
	if err = listen(vmdir.AgentSock); err != nil {
		return nil, nil, err
	}
	if err = listen(vmdir.QMPSock); err != nil {
		return nil, nil, err
	}
	if spec.WorkspaceDisk != "" {
		disk := workspaceTop(spec)
		if !filepath.IsAbs(disk) {
			disk = spec.Dir.Path(disk)
		}
		if err = open(disk, os.O_RDWR); err != nil {
			return nil, nil, err
		}
		if err = open(disk, os.O_RDONLY); err != nil {
			return nil, nil, err
		}
		if spec.WorkspaceBase != "" {
			base := spec.WorkspaceBase
			if !filepath.IsAbs(base) {
				base = spec.Dir.Path(base)
			}
			if err = open(base, os.O_RDONLY); err != nil {
				return nil, nil, err
			}
			if spec.TransferDisk != "" {
				if err = open(spec.TransferDisk, os.O_RDONLY); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	extra := files
	switch {
	case !spec.Network:
	case spec.NetworkFile != nil:
		// After the disks, matching netFD; the caller keeps its copy.
		extra = append(slices.Clone(files), spec.NetworkFile)
	case os.Getenv(SlirpEnv) != "1":
		return nil, nil, errors.New("qemu: a networked guest needs pyro's network stack (no NetworkFile in the spec)")
	}
	priv := ChoosePrivileges(b.accel, spec.Kernel, spec.Initrd)
	// A layer chain's lower layers come last (fdChain).
	nfixed := len(files)
	if err = openChain(spec, open); err != nil {
		return nil, nil, err
	}
	extra = append(slices.Clone(extra), files[nfixed:]...)
	if spec.RestoreState != "" && spec.RestoreRAM != "" {
		// Read-only here; QEMU reopens it (through /proc/self/fd) for
		// its private mapping, which the file's seals allow.
		if err = open(spec.RestoreRAM, os.O_RDONLY); err != nil {
			return nil, nil, err
		}
		extra = append(extra, files[len(files)-1])
		if len(extra)+2 != fdRAM(spec) {
			return nil, nil, fmt.Errorf("qemu: ram file would be descriptor %d, not %d", len(extra)+2, fdRAM(spec))
		}
	}
	if spec.RestoreState != "" { // last: fdState
		if err = open(spec.RestoreState, os.O_RDONLY); err != nil {
			return nil, nil, err
		}
		extra = append(extra, files[len(files)-1])
		if len(extra)+2 != fdState(spec) {
			return nil, nil, fmt.Errorf("qemu: state file would be descriptor %d, not %d", len(extra)+2, fdState(spec))
		}
	}
	cmd = exec.Command(b.binary, b.Args(spec)...)
	cmd.Env = Env()
	cmd.Dir = "/"
	cmd.ExtraFiles = extra
	cmd.Stdout = console
	if a := priv.Drop; a != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: a.Groups}}
	}
	return cmd, cleanup, nil
}

// listenFile binds a listening unix socket at path (replacing a stale one)
// and returns its descriptor; the path stays when pyro's copy is closed.
func listenFile(path string) (*os.File, error) {
	_ = os.Remove(path)
	l, err := unixsock.Listen(path)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	return l.File()
}
