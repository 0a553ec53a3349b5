package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/reaper"
)

// Paths inside the guest.
const (
	modulesDir   = "/pyro/modules"
	modulesOrder = "/pyro/modules.order"
	rootDisk     = "/dev/vda"
	// WorkspaceDisk is the optional second disk: the persistent /workspace
	// (ext4, made by the host with mke2fs, possibly empty); in a layered
	// workspace it is the writable upper disk.
	WorkspaceDisk = "/dev/vdb"
	// WorkspaceBaseDisk is a layered workspace's baseline (third disk).
	WorkspaceBaseDisk = "/dev/vdc"
	// WorkspaceDir is where WorkspaceDisk is mounted; without the disk it
	// is a plain directory of the overlay root.
	WorkspaceDir = "/workspace"
	lowerDir     = "/run/pyro/lower"
	rwDir        = "/run/pyro/rw"
	newRoot      = "/newroot"
	diskWait     = 5 * time.Second
)

// bootConfig is what Init reads from the kernel command line.
type bootConfig struct {
	net      bool   // pyro.net=1
	poweroff bool   // pyro.poweroff=1
	hostname string // pyro.hostname=NAME
	debug    bool   // pyro.debug=1: verbose agent log on the console
	// pyro.workspace=1: a workspace disk is attached; wait for it and fail
	// the boot if it does not appear. Without it, /dev/vdb is mounted if
	// present when the root is ready.
	workspace bool
	// pyro.workspace=2: /workspace is layered (see layers.go): the
	// baseline disk under the upper disk, as an overlay.
	layered bool
	// pyro.workspace=defer (defer2: layered): as workspace, but only wait
	// for the disks; the host asks for the mount after a restore
	// (agentapi.PathIdentity), so a snapshot's guest never reads the
	// placeholder disks' contents.
	deferWorkspace bool
	// pyro.snapshot=1: the guest may be saved as a memory snapshot.
	snapshot bool
}

func parseCmdline(s string) bootConfig {
	c := bootConfig{hostname: "pyro"}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pyro.net":
			c.net = v == "1"
		case "pyro.poweroff":
			c.poweroff = v == "1"
		case "pyro.hostname":
			if isHostname(v) {
				c.hostname = v
			}
		case "pyro.debug":
			c.debug = v == "1"
		case "pyro.workspace":
			c.workspace = v == "1" || v == "2" || v == "defer" || v == "defer2"
			c.layered = v == "2" || v == "defer2"
			c.deferWorkspace = v == "defer" || v == "defer2"
		case "pyro.snapshot":
			c.snapshot = v == "1"
		}
	}
	return c
}

// Init is the guest's PID 1. It mounts the pseudo filesystems, loads the
// kernel modules, switches to the root disk (read-only ext4 under a tmpfs
// overlay), sets up the network, starts the agent child and reaps
// processes. It powers off (reboots, which makes QEMU exit) on SIGTERM or
// SIGUSR2, and on any fatal error. It never returns.
func Init() {
	initStarted := uptimeMS()
	// Signals first, so a shutdown during boot is not lost.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGUSR2, unix.SIGINT, unix.SIGCHLD)

	cfg, err := setupRoot()
	if err != nil {
		fatal(err)
	}
	// Init and the agent (which inherits it) are never the OOM killer's
	// choice; user work is reset to 0 when the agent starts it.
	if err := protectFromOOM(); err != nil {
		consolef("pyro-init: oom_score_adj: %v\n", err)
	}
	rootReady := uptimeMS()
	if cfg.poweroff {
		consolef("pyro-init: boot ok (init %d ms, root %d ms), powering off\n", initStarted, rootReady)
		powerOff()
	}
	prefetch()
	if err := setupSystem(cfg); err != nil {
		fatal(err)
	}
	// After setupSystem: a layered workspace's disks are mounted under
	// /run, which setupSystem makes a fresh tmpfs.
	if err := mountWorkspace(cfg); err != nil {
		fatal(err)
	}
	// Without it the guest still works, with no limits on user work.
	if err := setupUserCgroup(); err != nil {
		consolef("pyro-init: user cgroup: %v\n", err)
	}
	env := append(os.Environ(),
		"PATH="+DefaultPath,
		agentGODEBUG,
		envInitStarted+"="+strconv.FormatInt(initStarted, 10),
		envRootReady+"="+strconv.FormatInt(rootReady, 10),
	)
	if cfg.debug {
		env = append(env, envLogLevel+"=debug")
	}
	if cfg.snapshot {
		env = append(env, envSnapshot+"=1")
	}
	supervise(sigs, env)
}

// firstExecFiles are what nearly every first command loads: the dynamic
// loader, libc and the shells.
var firstExecFiles = []string{
	"/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6",
	"/bin/sh", "/bin/bash", "/lib/x86_64-linux-gnu/libtinfo.so.6", "/usr/bin/env",
}

// prefetch asks the kernel to read firstExecFiles ahead. The reads are
// served by QEMU's I/O thread on another host core while the guest's vCPU
// starts the agent, so the first command does not wait for the disk.
func prefetch() {
	for _, p := range firstExecFiles {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		_ = unix.Fadvise(fd, 0, 0, unix.FADV_WILLNEED)
		unix.Close(fd)
	}
}

// setupRoot does steps 1-5: pseudo filesystems, modules, root disk, switch
// root.
func setupRoot() (bootConfig, error) {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return bootConfig{}, err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return bootConfig{}, fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	reopenConsole()
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return bootConfig{}, fmt.Errorf("read kernel command line: %w", err)
	}
	cfg := parseCmdline(string(b))
	t0 := uptimeMS()
	if err := loadModules(); err != nil {
		return cfg, err
	}
	t1 := uptimeMS()
	if err := mountRoot(); err != nil {
		return cfg, err
	}
	if cfg.debug {
		consolef("pyro-init: modules %d ms, root disk+overlay %d ms\n", t1-t0, uptimeMS()-t1)
	}
	if err := switchRoot(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// mountWorkspace creates /workspace in the new root and mounts the
// workspace disk on it (ext4, read-write) if there is one. With
// cfg.workspace, the disk must appear within diskWait; with cfg.layered,
// the baseline disk too, and /workspace is their overlay.
func mountWorkspace(cfg bootConfig) error {
	if err := os.MkdirAll(WorkspaceDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", WorkspaceDir, err)
	}
	disks := []string{WorkspaceDisk}
	if cfg.layered {
		disks = append(disks, WorkspaceBaseDisk)
	}
	deadline := time.Now().Add(diskWait)
	for _, disk := range disks {
		for {
			if _, err := os.Stat(disk); err == nil {
				break
			}
			if !cfg.workspace {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("workspace disk %s did not appear within %s", disk, diskWait)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	if cfg.deferWorkspace {
		return nil
	}
	return mountWorkspaceDisks(cfg.layered)
}

// writableExt4Opts are the options of a writable workspace disk's mount.
// noinit_itable: the host makes these disks with mke2fs, which leaves
// the inode tables to be zeroed lazily, and every mount then started a
// kernel thread (ext4lazyinit) that zeroes them in the background: guest
// CPU (and, under TCG, fresh kernel code to translate) right after a
// warm start, and zeroes written into the sparse disk file. ext4 does not
// need them zeroed: each group records how much of its table is in use
// (uninit_bg, metadata_csum) and inodes are initialised as they are
// allocated; the zeroing only spares e2fsck some trust in that record.
const writableExt4Opts = "noinit_itable"

// mountWorkspaceDisks mounts the present workspace disk(s) on /workspace.
func mountWorkspaceDisks(layered bool) error {
	if layered {
		return mountLayers(WorkspaceBaseDisk, WorkspaceDisk, WorkspaceDir)
	}
	if err := unix.Mount(WorkspaceDisk, WorkspaceDir, "ext4", unix.MS_NOATIME|unix.MS_NODEV, writableExt4Opts); err != nil {
		return fmt.Errorf("mount workspace disk %s on %s: %w", WorkspaceDisk, WorkspaceDir, err)
	}
	// mke2fs leaves an empty lost+found; /workspace shows only what the
	// user put there (e2fsck recreates it if it is ever needed).
	_ = unix.Rmdir(WorkspaceDir + "/lost+found")
	return nil
}

func loadModules() error {
	f, err := os.Open(modulesOrder)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		if err := loadModule(filepath.Join(modulesDir, rel)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open module %s: %w", path, err)
	}
	defer unix.Close(fd)
	flags := 0
	if strings.HasSuffix(path, ".xz") || strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".gz") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(fd, "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

func mountRoot() error {
	deadline := time.Now().Add(diskWait)
	for {
		if _, err := os.Stat(rootDisk); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root disk %s did not appear within %s (is virtio_blk loaded and a disk attached?)", rootDisk, diskWait)
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, d := range []string{lowerDir, rwDir, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount(rootDisk, lowerDir, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		return fmt.Errorf("mount root disk %s: %w", rootDisk, err)
	}
	if err := unix.Mount("tmpfs", rwDir, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount writable layer: %w", err)
	}
	for _, d := range []string{rwDir + "/upper", rwDir + "/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	data := "lowerdir=" + lowerDir + ",upperdir=" + rwDir + "/upper,workdir=" + rwDir + "/work"
	if err := unix.Mount("overlay", newRoot, "overlay", 0, data); err != nil {
		return fmt.Errorf("mount overlay root: %w", err)
	}
	return nil
}

func switchRoot() error {
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		dst := newRoot + d
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(d, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into new root: %w", d, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move new root onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// setupSystem is step 6: the mounts a system expects, hostname, network.
func setupSystem(cfg bootConfig) error {
	for _, m := range []struct {
		fstype, dst string
		flags       uintptr
		data        string
		mode        os.FileMode
	}{
		{"devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
		{"tmpfs", "/dev/shm", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
		{"tmpfs", "/tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	} {
		if err := os.MkdirAll(m.dst, m.mode); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.dst, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		if _, err := os.Lstat(l[1]); err != nil {
			_ = os.Symlink(l[0], l[1])
		}
	}
	if err := unix.Sethostname([]byte(cfg.hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	WriteHosts("/etc/hosts", cfg.hostname)
	// A machine-id of its own for every booted guest: the image's file is
	// absent, empty or shared by every guest of that image. A restored
	// guest gets another one with its identity (identity_linux.go),
	// written in place over this plain file of the writable layer.
	_ = rewriteFile(machineIDPath, []byte(newMachineID()+"\n"), 0o444)
	if cfg.snapshot {
		// Every restored guest writes its own hosts file too; WriteHosts
		// leaves a hosts file that names the host already where it is,
		// in the read-only lower layer.
		copyUp("/etc/hosts", 0o644)
	}
	if err := setupNetwork(cfg.net); err != nil {
		return err
	}
	return nil
}

// WriteHosts makes hostname resolve in the hosts file at path (sudo and
// some tools insist), keeping what the file already has.
func WriteHosts(path, hostname string) {
	b, err := os.ReadFile(path)
	if err != nil {
		b = []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	if b, add := hostsContent(b, hostname); add {
		_ = rewriteFile(path, b, 0o644)
	}
}

// hostsPath is the guest's hosts file.
const hostsPath = "/etc/hosts"

// hostsContent is the hosts file b with hostname resolving, and whether
// it changed. Debian names the machine on its 127.0.1.1 line; a guest
// gets a new hostname at every restore or fork, so that line's first name
// is replaced (its other names are the user's and stay) instead of a line
// being added each time: a workspace forked and restarted many times
// keeps one line, naming only itself.
func hostsContent(b []byte, hostname string) ([]byte, bool) {
	lines := strings.Split(string(b), "\n")
	for _, line := range lines {
		if f := strings.Fields(line); len(f) > 1 && !strings.HasPrefix(f[0], "#") && slices.Contains(f[1:], hostname) {
			return b, false
		}
	}
	for i, line := range lines {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "127.0.1.1" {
			f[1] = hostname
			lines[i] = f[0] + "\t" + strings.Join(f[1:], " ")
			return []byte(strings.Join(lines, "\n")), true
		}
	}
	b = slices.Clip(b)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return append(b, "127.0.1.1\t"+hostname+"\n"...), true
}

// rewriteFile gives the file at path the content b. A regular file is
// rewritten in place; a link (the lower layer's file may be one) or a
// missing file is replaced by a new regular file with mode perm. In
// place is what a restored guest does (init made the file a plain one in
// the writable layer at boot, copyUp): on the overlay root a replacement
// is an unlink that leaves a whiteout and a create over it, much more
// kernel code for a freshly restored guest to translate than a write.
// Nor is the file truncated first: the new content is written over the
// old (a machine-id, or the hosts file with a line added, is as long or
// longer), and only a longer old file is cut to size after. A truncate
// frees the file's page and the write allocates (and charges) another:
// on a restored guest's tmpfs upper layer that is ~10 ms of kernel code
// translated afresh, for a page that could be written in place.
func rewriteFile(path string, b []byte, perm os.FileMode) error {
	// O_NONBLOCK: a FIFO put there fails the open instead of blocking it.
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		f := os.NewFile(uintptr(fd), path)
		var st unix.Stat_t
		if err = unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			_, err = f.Write(b)
			if err == nil && st.Size > int64(len(b)) {
				err = f.Truncate(int64(len(b)))
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		}
		f.Close()
	}
	if !errors.Is(err, unix.ENOENT) {
		_ = os.Remove(path)
	}
	return os.WriteFile(path, b, perm)
}

// newMachineID returns 32 random hex digits. GRND_INSECURE: at this
// point of a boot the kernel's RNG may not be initialised yet, and a
// machine-id must be unique, not secret, so it must not wait for it.
func newMachineID() string {
	var b [16]byte
	for n := 0; n < len(b); {
		m, err := unix.Getrandom(b[n:], unix.GRND_INSECURE)
		if err != nil {
			// Kernels before 5.6: the clock and pid still tell guests apart.
			binary.LittleEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
			binary.LittleEndian.PutUint64(b[8:], uint64(os.Getpid())<<32^uint64(time.Now().UnixNano()))
			break
		}
		n += m
	}
	return hex.EncodeToString(b[:])
}

// copyUp makes the file at path a regular file of the writable layer with
// the same content (a link is replaced by a copy of what it points at, a
// missing file by an empty one), so a later rewriteFile writes it in place.
func copyUp(path string, perm os.FileMode) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return
	}
	_ = rewriteFile(path, b, perm)
}

// agentGODEBUG turns off the Go runtime's asynchronous preemption in the
// agent server (not in user commands: their environment is the image's,
// exec.go). To preempt a goroutine that ran 10 ms without yielding, sysmon
// signals its thread (SIGURG); under TCG nearly every goroutine of a
// freshly restored guest runs that long (its code is being translated),
// so each warm start took such signals: the kernel's signal delivery and
// sigreturn and the runtime's handler (isAsyncSafePoint, pcvalue), ~600
// of the ~27,000 blocks a restored guest translated for `pyro run --
// true` (QEMU -d in_asm), code nothing else in the start needs. The agent
// runs no long loops without calls, and preemption at calls stays.
const agentGODEBUG = "GODEBUG=asyncpreemptoff=1"

// supervise is step 7-8: run the agent child, restart it when it dies, reap
// every orphan, and power off when asked.
func supervise(sigs chan os.Signal, env []string) {
	var (
		childPID int
		backoff  = 100 * time.Millisecond
		restart  <-chan time.Time
		started  time.Time
	)
	start := func() {
		p, err := os.StartProcess("/proc/self/exe", []string{"/init", ChildArg}, &os.ProcAttr{
			Dir:   "/",
			Env:   env,
			Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
			Sys:   &unix.SysProcAttr{Setsid: true},
		})
		if err != nil {
			consolef("pyro-init: start agent: %v\n", err)
			restart = time.After(backoff)
			return
		}
		childPID = p.Pid
		started = time.Now()
		_ = p.Release() // PID 1 reaps it with wait4(-1).
	}
	start()
	for {
		select {
		case <-restart:
			restart = nil
			start()
		case sig := <-sigs:
			if sig != unix.SIGCHLD {
				powerOff()
			}
			reaper.Reap(func(pid int, ws unix.WaitStatus) {
				if pid != childPID {
					return
				}
				childPID = 0
				if time.Since(started) > 10*time.Second {
					backoff = 100 * time.Millisecond
				} else if backoff < 5*time.Second {
					backoff *= 2
				}
				consolef("pyro-init: agent exited (%s), restarting in %s\n", reaper.Describe(ws), backoff)
				restart = time.After(backoff)
			})
		}
	}
}

// powerOff kills every process, syncs and reboots; with reboot=t and QEMU's
// -no-reboot that ends the VM. It never returns.
func powerOff() {
	reaper.KillAll(time.Second)
	unix.Sync()
	freezeDisks()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	consolef("pyro-init: reboot: %v\n", err)
	for {
		time.Sleep(time.Hour)
	}
}

// freezeDisks freezes the writable /workspace disk (the upper layer's, or
// a single-disk workspace's own) before the power-off: sync leaves the
// journal marked for recovery, which only a later mount replays, and the
// host reads a stopped workspace's image without mounting it (disk tools,
// host-side export). A frozen ext4 has its journal flushed and is clean.
// An overlay cannot be frozen: that attempt fails and changes nothing.
func freezeDisks() {
	for _, p := range []string{LayerUpperMount, "/workspace"} {
		if f, err := os.Open(p); err == nil {
			_ = ioctlNoArg(f, fiFreeze)
			f.Close()
		}
	}
}

// fatal reports err on the console and powers off so the VMM exits instead
// of hanging.
func fatal(err error) {
	consolef("pyro-init: fatal: %v\n", err)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// reopenConsole points fds 0-2 at /dev/console in case the kernel could not
// open it before devtmpfs was mounted.
func reopenConsole() {
	if _, err := unix.FcntlInt(1, unix.F_GETFD, 0); err == nil {
		return
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		if i != fd {
			_ = unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		_ = unix.Close(fd)
	}
}

func consolef(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format, args...)
}
