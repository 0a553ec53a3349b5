package hostcompat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agent"
	"github.com/pyro-mcp/pyro/internal/reaper"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Main runs a sandbox process; args are os.Args[2:] (after HiddenArg). It
// never returns.
func Main(args []string) {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "pyro-hostcompat: missing role")
		os.Exit(2)
	}
	switch args[0] {
	case roleInit, roleSandbox:
		if len(args) != 2 {
			fmt.Fprintf(os.Stderr, "pyro-hostcompat: %s wants one config argument\n", args[0])
			os.Exit(2)
		}
		if args[0] == roleInit {
			runInit(args[1])
		}
		runSandbox(args[1])
	case roleHold:
		runHold()
	case roleServe:
		runServe()
	case roleAgent:
		runAgent()
	}
	fmt.Fprintf(os.Stderr, "pyro-hostcompat: unknown role %q\n", args[0])
	os.Exit(2)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pyro-hostcompat: fatal: "+format+"\n", args...)
	os.Exit(1)
}

// runInit is the host side of the sandbox: real root, PID 1 of a new PID
// namespace (everything below dies with it) in a new mount namespace.
func runInit(arg string) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	if os.Getpid() != 1 {
		fatalf("not PID 1 of a new PID namespace (pid %d)", os.Getpid())
	}
	cfg, err := parseConfig(arg)
	if err != nil {
		fatalf("%v", err)
	}
	// First of all: nothing may run outside the limits.
	if err := (&cgroup{Dirs: cfg.Cgroup}).join(); err != nil {
		fatalf("%v", err)
	}
	ln, err := prepare(cfg)
	if err != nil {
		fatalf("%v", err)
	}
	sandbox, err := startSandbox(cfg, ln)
	if err != nil {
		fatalf("%v", err)
	}
	_ = ln.Close()
	done := make(chan struct{})
	go func() {
		_ = sandbox.Wait()
		close(done)
	}()
	for {
		select {
		case sig := <-sigs:
			// The sandbox's PID 1 ends everything inside; give it a
			// moment, then leave (which kills what is left).
			_ = sandbox.Process.Signal(sig)
			select {
			case <-done:
			case <-time.After(2 * time.Second):
			}
			os.Exit(0)
		case <-done:
			fmt.Fprintf(os.Stderr, "pyro-hostcompat: sandbox exited (%v)\n", sandbox.ProcessState)
			os.Exit(0)
		}
	}
}

// prepare builds the sandbox's root in the init's mount namespace: a sized
// tmpfs holding the overlay's upper layer, the root image (read-only) and
// the workspace image, both idmapped to the sandbox's ids, and the overlay
// root. It returns the listening agent socket (in the VM directory), and
// leaves the current directory at the new root: the sandbox starts there,
// in its copy of this mount namespace (a path would not do: the VM
// directory is closed to the sandbox's ids, and an open directory would
// point into this namespace, not the copy).
func prepare(cfg config) (ln *os.File, err error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make mounts private: %w", err)
	}
	// A /proc of this PID namespace: the host's would resolve this
	// namespace's pids (the children's uid_map, ns/user) to other
	// processes.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, fmt.Errorf("mount /proc: %w", err)
	}
	staging := filepath.Join(cfg.Dir, stagingDir)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, err
	}
	// The upper layer is what the sandbox writes to /; it is charged to
	// the sandbox's memory cgroup and sized by its memory too. (Not
	// nodev: the loop device nodes are made here.)
	opts := fmt.Sprintf("mode=0755,size=%dm,nr_inodes=%d", cfg.MemMiB, rootInodes)
	if err := unix.Mount("tmpfs", staging, "tmpfs", unix.MS_NOSUID, opts); err != nil {
		return nil, fmt.Errorf("mount staging tmpfs: %w", err)
	}
	// Relative paths from here on: the VM directory may be long or hold
	// characters overlayfs options cannot.
	if err := unix.Chdir(staging); err != nil {
		return nil, err
	}
	for _, d := range []string{"image", "lower", "upper", "work", "new"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	// The sandbox's root owns the overlay's writable side (and so "/").
	for _, d := range []string{"upper", "work"} {
		if err := os.Lchown(d, int(cfg.IDs.UIDBase), int(cfg.IDs.GIDBase)); err != nil {
			return nil, err
		}
	}
	userns, err := mappingUserns(cfg.IDs)
	if err != nil {
		return nil, err
	}
	defer unix.Close(userns)
	mountShifted := func(image, dst string, readOnly bool) error {
		if err := mountImage(image, "image", readOnly); err != nil {
			return fmt.Errorf("mount image %s: %w", image, err)
		}
		attrs := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
		if readOnly {
			attrs |= unix.MOUNT_ATTR_RDONLY
		}
		if err := idmapMount("image", dst, userns, attrs); err != nil {
			return err
		}
		return unix.Unmount("image", unix.MNT_DETACH)
	}
	if err := mountShifted(cfg.Rootfs, "lower", true); err != nil {
		return nil, err
	}
	if err := unix.Mount("overlay", "new", "overlay", unix.MS_NOSUID|unix.MS_NODEV, "lowerdir=lower,upperdir=upper,workdir=work"); err != nil {
		return nil, fmt.Errorf("mount overlay root: %w", err)
	}
	if cfg.Workspace != "" {
		if err := os.MkdirAll("new/workspace", 0o755); err != nil {
			return nil, err
		}
		if err := mountShifted(cfg.Workspace, "new/workspace", false); err != nil {
			return nil, err
		}
	}
	// The socket must be reachable from the host: it lives in the VM
	// directory, made before the sandbox loses sight of it.
	if err := unix.Chdir(cfg.Dir); err != nil {
		return nil, err
	}
	_ = os.Remove(vmdir.AgentSock)
	l, err := net.Listen("unix", vmdir.AgentSock)
	if err != nil {
		return nil, fmt.Errorf("listen on agent socket: %w", err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	ln, err = ul.File()
	if err != nil {
		return nil, err
	}
	_ = ul.Close()
	if err := unix.Chdir(filepath.Join(stagingDir, "new")); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// Sizes of the sandbox's tmpfs mounts: inode counts bound the kernel
// memory a sandbox can pin with empty files.
const (
	rootInodes  = 262144
	smallInodes = 65536
)

// startSandbox starts the sandbox's PID 1 in its own user (mapped to
// cfg.IDs), mount, PID, UTS, IPC, network and cgroup namespaces, handing it
// the agent socket as fd 3. It starts in the current directory (its root).
func startSandbox(cfg config, ln *os.File) (*exec.Cmd, error) {
	b, err := json.Marshal(sandboxConfig{Hostname: cfg.Hostname, MemMiB: cfg.MemMiB})
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/proc/self/exe", HiddenArg, roleSandbox, string(b))
	cmd.Args[0] = "pyro"
	cmd.Env = []string{sandboxPath}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{ln}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 sandboxCloneflags,
		UidMappings:                cfg.IDs.uidMap(),
		GidMappings:                cfg.IDs.gidMap(),
		GidMappingsEnableSetgroups: true,
		// Entering a user namespace keeps the host ids (host root,
		// unmapped there); becoming 0 inside is what makes the process
		// the namespace's root, host ids cfg.IDs.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sandbox: %w", err)
	}
	return cmd, nil
}

// runSandbox is PID 1 inside the sandbox's namespaces, root of its user
// namespace (with capabilities only there).
func runSandbox(arg string) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGCHLD)
	if os.Getpid() != 1 {
		fatalf("sandbox: not PID 1 of a new PID namespace (pid %d)", os.Getpid())
	}
	// Nothing in the sandbox may open this process's /proc files (its
	// exe is the host's pyro binary; its memory holds its capabilities).
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fatalf("sandbox: set non-dumpable: %v", err)
	}
	var cfg sandboxConfig
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil || cfg.MemMiB <= 0 || cfg.Hostname == "" {
		fatalf("sandbox: bad config %q: %v", arg, err)
	}
	ln := os.NewFile(3, "agent.sock")
	// The root came from the init's namespace, so here it is a locked
	// mount, which pivot_root refuses to move: bind it onto itself (the
	// new top mount is this namespace's own) and step onto the bind
	// (".." is the staging tmpfs, open to all).
	if err := unix.Mount(".", ".", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		fatalf("sandbox: bind root: %v", err)
	}
	if err := unix.Chdir("../new"); err != nil {
		fatalf("sandbox: enter root: %v", err)
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		os.WriteFile("/tmp/hc/status", b, 0o666)
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		os.WriteFile("/tmp/hc/mountinfo", b, 0o666)
	}
	if err := populate(".", cfg); err != nil {
		fatalf("sandbox: %v", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		fatalf("sandbox: pivot_root: %v", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		fatalf("sandbox: detach old root: %v", err)
	}
	if err := unix.Chdir("/"); err != nil {
		fatalf("sandbox: %v", err)
	}
	p, err := os.StartProcess("/proc/self/exe", []string{"pyro", HiddenArg, roleServe}, &os.ProcAttr{
		Dir:   "/",
		Env:   []string{sandboxPath},
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, ln},
		Sys:   &unix.SysProcAttr{Pdeathsig: unix.SIGKILL},
	})
	if err != nil {
		fatalf("start agent server: %v", err)
	}
	_ = ln.Close()
	server := p.Pid
	_ = p.Release() // reaped below with wait4(-1)
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			shutdown()
		}
		reaper.Reap(func(pid int, ws unix.WaitStatus) {
			if pid == server {
				fmt.Fprintf(os.Stderr, "pyro-hostcompat: agent server exited (%s)\n", reaper.Describe(ws))
				shutdown()
			}
		})
	}
}

// shutdown ends the sandbox: TERM to everything, a short grace, then exit;
// the kernel kills whatever is left in the PID namespace when PID 1 exits.
func shutdown() {
	reaper.KillAll(500 * time.Millisecond)
	os.Exit(0)
}

// populate mounts what a system expects inside root (relative to the cwd),
// every tmpfs sized, sets the hostname, writes /etc/hosts and brings up
// lo. It runs as root of the sandbox's user namespace, before the root
// switch (the host's /dev nodes are bound in).
func populate(root string, cfg sandboxConfig) error {
	half := max(cfg.MemMiB/2, 16)
	type mnt struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}
	for _, m := range []mnt{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/dev", "tmpfs", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=0755,size=65536k"},
	} {
		if err := mountAt(root, m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	// Host device nodes that are safe to share.
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		dst := filepath.Join(root, "dev", n)
		if err := os.WriteFile(dst, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+n, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
	}
	for _, m := range []mnt{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, fmt.Sprintf("mode=1777,size=%dm,nr_inodes=%d", half, smallInodes)},
		{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, fmt.Sprintf("mode=0755,size=%dm,nr_inodes=%d", min(half, 64), smallInodes)},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, fmt.Sprintf("mode=1777,size=%dm,nr_inodes=%d", half, smallInodes)},
	} {
		if err := mountAt(root, m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		if err := os.Symlink(l[0], filepath.Join(root, "dev", l[1])); err != nil {
			return err
		}
	}
	// The host kernel's global knobs stay read-only (the sandbox has no
	// capability to remount them, and no mount syscalls).
	for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"} {
		if err := readOnlyBind(filepath.Join(root, p)); err != nil {
			return err
		}
	}
	for _, p := range []string{"/proc/kcore", "/proc/kmsg", "/proc/keys", "/proc/timer_list"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			if err := unix.Mount(filepath.Join(root, "dev/null"), filepath.Join(root, p), "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("mask %s: %w", p, err)
			}
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	agent.WriteHosts(filepath.Join(root, "etc/hosts"), cfg.Hostname)
	if err := loopbackUp(); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	return nil
}

func mountAt(root, src, dst, fstype string, flags uintptr, data string) error {
	p := filepath.Join(root, dst)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, p, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, dst, err)
	}
	return nil
}

func readOnlyBind(p string) error {
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", p, err)
	}
	return nil
}

// loopbackUp brings lo up in the sandbox's own network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// mountImage attaches image to a free loop device (auto-clearing, so it
// goes away with the last mount) and mounts it as ext4 on dst. The device
// node is made in the current directory (the staging tmpfs), so nothing
// depends on the host's /dev having it.
func mountImage(image, dst string, readOnly bool) error {
	node, dev, err := attachLoop(image, readOnly)
	if err != nil {
		return err
	}
	defer dev.Close() // the mount holds the device from here on
	defer os.Remove(node)
	flags, data := uintptr(unix.MS_NOSUID), ""
	if readOnly {
		flags |= unix.MS_RDONLY
		data = "noload"
	}
	if err := unix.Mount(node, dst, "ext4", flags, data); err != nil {
		return err
	}
	return nil
}

// attachLoop binds image to a free loop device. It returns the device node
// it made and the open device (closing it before mounting would clear it).
func attachLoop(image string, readOnly bool) (string, *os.File, error) {
	mode := os.O_RDWR
	if readOnly {
		mode = os.O_RDONLY
	}
	img, err := os.OpenFile(image, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	defer img.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control (is the loop module loaded?): %w", err)
	}
	defer ctl.Close()
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if readOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("find a free loop device: %w", err)
		}
		node := fmt.Sprintf("loop%d", n)
		_ = os.Remove(node)
		if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(7, uint32(n)))); err != nil {
			return "", nil, fmt.Errorf("mknod %s: %w", node, err)
		}
		dev, err := os.OpenFile(node, mode|unix.O_CLOEXEC, 0)
		if err != nil {
			_ = os.Remove(node)
			return "", nil, err
		}
		err = configureLoop(int(dev.Fd()), int(img.Fd()), flags)
		if err == nil {
			abs, _ := filepath.Abs(node)
			return abs, dev, nil
		}
		dev.Close()
		_ = os.Remove(node)
		if !errors.Is(err, unix.EBUSY) {
			return "", nil, fmt.Errorf("attach %s to %s: %w", image, node, err)
		}
		// Someone else took it between GET_FREE and our attach.
	}
	return "", nil, fmt.Errorf("attach %s: loop devices stayed busy", image)
}

func configureLoop(devFd, imgFd int, flags uint32) error {
	cfg := unix.LoopConfig{Fd: uint32(imgFd)}
	cfg.Info.Flags = flags
	err := unix.IoctlLoopConfigure(devFd, &cfg)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	// Kernels before 5.8: the two-step attach.
	if err := unix.IoctlSetInt(devFd, unix.LOOP_SET_FD, imgFd); err != nil {
		return err
	}
	info := unix.LoopInfo64{Flags: flags}
	if err := unix.IoctlLoopSetStatus64(devFd, &info); err != nil {
		_ = unix.IoctlSetInt(devFd, unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// runServe takes every privilege away (confine) and execs the agent
// server, which inherits the result along with the agent socket (fd 3).
func runServe() {
	if err := confine(); err != nil {
		fatalf("confine: %v", err)
	}
	err := unix.Exec("/proc/self/exe", []string{"pyro", HiddenArg, roleAgent}, []string{sandboxPath})
	fatalf("exec agent server: %v", err)
}

// runAgent is the agent server: it accepts one host connection at a time
// on the socket PID 1 handed it (fd 3) and serves the agent API on it.
func runAgent() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "pyro-agent", "backend", "host")
	started := time.Now()
	// The commands run as the same (capability-less) user: keep them out
	// of the server's /proc files (its exe is the host's pyro binary).
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fatalf("agent: set non-dumpable: %v", err)
	}
	ln, err := net.FileListener(os.NewFile(3, "agent.sock"))
	if err != nil {
		fatalf("agent socket: %v", err)
	}
	a := agent.New(agent.Options{
		Logger:         log,
		Shutdown:       func() { _ = unix.Kill(1, unix.SIGTERM) },
		AgentStartedMS: uptimeMS(started),
	})
	err = a.ServeListener(context.Background(), agent.NetListener(ln))
	if errors.Is(err, net.ErrClosed) {
		os.Exit(0)
	}
	fatalf("agent socket: %v", err)
}

// uptimeMS is t as milliseconds since the host booted (the boot
// milestones' clock in a guest); 0 if unknown.
func uptimeMS(t time.Time) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano()).Milliseconds() - time.Since(t).Milliseconds()
}
