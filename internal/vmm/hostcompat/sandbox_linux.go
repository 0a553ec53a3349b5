package hostcompat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
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
	case roleInit:
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "pyro-hostcompat: init wants one config argument")
			os.Exit(2)
		}
		runInit(args[1])
	case roleServe:
		runServe()
	}
	fmt.Fprintf(os.Stderr, "pyro-hostcompat: unknown role %q\n", args[0])
	os.Exit(2)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pyro-hostcompat: fatal: "+format+"\n", args...)
	os.Exit(1)
}

// runInit is PID 1 of the sandbox's PID namespace.
func runInit(arg string) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGCHLD)
	if os.Getpid() != 1 {
		fatalf("not PID 1 of a new PID namespace (pid %d)", os.Getpid())
	}
	cfg, err := parseConfig(arg)
	if err != nil {
		fatalf("%v", err)
	}
	ln, err := setup(cfg)
	if err != nil {
		fatalf("%v", err)
	}
	dropCapabilities(cfg.Network)
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

// setup builds the sandbox root and switches into it. It returns the
// listening agent socket (created in the VM directory before the switch).
func setup(cfg config) (*os.File, error) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("make mounts private: %w", err)
	}
	staging := filepath.Join(cfg.Dir, stagingDir)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("tmpfs", staging, "tmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
		return nil, fmt.Errorf("mount staging tmpfs: %w", err)
	}
	// Relative paths from here on: the VM directory may be long or hold
	// characters overlayfs options cannot.
	if err := unix.Chdir(staging); err != nil {
		return nil, err
	}
	for _, d := range []string{"lower", "upper", "work", "new"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := mountImage(cfg.Rootfs, "lower", true); err != nil {
		return nil, fmt.Errorf("mount root image %s: %w", cfg.Rootfs, err)
	}
	if err := unix.Mount("overlay", "new", "overlay", 0, "lowerdir=lower,upperdir=upper,workdir=work"); err != nil {
		return nil, fmt.Errorf("mount overlay root: %w", err)
	}
	if err := populate("new", cfg); err != nil {
		return nil, err
	}
	// The socket must be reachable from the host, so it is made before
	// the old root goes away.
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
	lf, err := ul.File()
	if err != nil {
		return nil, err
	}
	_ = ul.Close()
	if err := unix.Chdir(filepath.Join(stagingDir, "new")); err != nil {
		return nil, err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return nil, fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return nil, fmt.Errorf("detach old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return nil, err
	}
	return lf, nil
}

// populate mounts what a system expects inside root (relative to the cwd)
// and writes hostname, hosts and resolv.conf.
func populate(root string, cfg config) error {
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
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
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
	// The host kernel's global knobs stay read-only (and, with
	// CAP_SYS_ADMIN dropped, cannot be remounted).
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
	if cfg.Workspace != "" {
		dst := filepath.Join(root, "workspace")
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := mountImage(cfg.Workspace, dst, false); err != nil {
			return fmt.Errorf("mount workspace image %s: %w", cfg.Workspace, err)
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	agent.WriteHosts(filepath.Join(root, "etc/hosts"), cfg.Hostname)
	if cfg.Network {
		if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			dst := filepath.Join(root, "etc/resolv.conf")
			_ = os.Remove(dst) // often a dangling symlink in images
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return fmt.Errorf("write resolv.conf: %w", err)
			}
		}
	} else if err := loopbackUp(); err != nil {
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

// dropCapabilities narrows the bounding set before the agent server is
// executed, so commands (root in the sandbox) cannot load modules, mount,
// reboot, set the clock or make device nodes on the shared kernel; with the
// host network shared they cannot reconfigure it either.
func dropCapabilities(hostNet bool) {
	caps := []int{
		unix.CAP_SYS_MODULE, unix.CAP_SYS_ADMIN, unix.CAP_SYS_BOOT, unix.CAP_SYS_TIME,
		unix.CAP_SYS_RAWIO, unix.CAP_MKNOD, unix.CAP_MAC_ADMIN, unix.CAP_MAC_OVERRIDE,
		unix.CAP_AUDIT_CONTROL, unix.CAP_AUDIT_READ, unix.CAP_SYSLOG, unix.CAP_WAKE_ALARM,
		unix.CAP_BLOCK_SUSPEND, unix.CAP_SYS_PACCT, unix.CAP_BPF, unix.CAP_PERFMON,
		unix.CAP_CHECKPOINT_RESTORE,
	}
	if hostNet {
		caps = append(caps, unix.CAP_NET_ADMIN)
	}
	for _, c := range caps {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			fmt.Fprintf(os.Stderr, "pyro-hostcompat: drop capability %d: %v\n", c, err)
		}
	}
}

// runServe is the agent server: it accepts one host connection at a time
// on the socket PID 1 handed it (fd 3) and serves the agent API on it.
func runServe() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "pyro-agent", "backend", "host")
	started := time.Now()
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
