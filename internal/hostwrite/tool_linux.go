package hostwrite

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/vmm/hostcompat"
)

// HiddenArg is the first argument with which pyro re-executes itself to
// become the confined debugfs (Main): a parser of a guest-written image
// must be unable to reach anything on the host but the image and the
// staged push source.
const HiddenArg = "__pyro-hostwrite"

// The descriptors the tool gets: the image (read-write) and the staging
// root (a directory). The script names them through /proc/self/fd, so the
// tool needs no path on the host to either.
const (
	imageFD = 3
	treeFD  = 4
)

var (
	imagePath = fmt.Sprintf("/proc/self/fd/%d", imageFD)
	treePath  = fmt.Sprintf("/proc/self/fd/%d", treeFD)
)

// exitUnconfinable is Main's exit status when the host cannot confine the
// tool (no Landlock): the caller pushes through the guest instead.
const exitUnconfinable = 125

// Main runs in the re-executed pyro; args are the image's size (the
// tool's file-size limit; 0: the tool only reads the image, and gets no
// tree), then debugfs's path and its arguments. It confines the process, then execs debugfs:
//   - Landlock: files may be read only beneath the staging root and the
//     system's program directories (debugfs and its libraries), written
//     only in the image; with a new enough kernel no signals or abstract
//     sockets reach outside, no TCP; ptrace of anything outside is refused;
//   - every capability dropped, no_new_privs, the host-compat sandbox's
//     seccomp filter (no mounts, modules, ptrace, namespaces, ...) and the
//     tool's (hostcompat.ConfineTool: no chmod, chown, utimes or xattr
//     changes, which Landlock does not govern, no sockets, no new
//     processes).
//
// and rlimits (CPU, memory, file size, open files, no forks for a non-root
// caller). The caller adds new PID, network, IPC and UTS namespaces, a
// deadline and a process-group kill.
func Main(args []string) {
	runtime.LockOSThread()
	size, err := strconv.ParseUint(firstOr(args), 10, 64)
	if err != nil || len(args) < 2 {
		fmt.Fprintln(os.Stderr, "pyro: hostwrite: usage: SIZE PROGRAM [ARG...]")
		os.Exit(2)
	}
	args = args[1:]
	// Only stdin, stdout, stderr, the image and the tree reach the tool:
	// a descriptor pyro itself inherited without close-on-exec (from
	// whatever started it) is outside what Landlock governs.
	if err := unix.CloseRange(treeFD+1, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "pyro: hostwrite: confine: close descriptors: %v\n", err)
		os.Exit(2)
	}
	if err := landlock(size == 0); err != nil {
		fmt.Fprintf(os.Stderr, "pyro: hostwrite: confine: %v\n", err)
		if errors.Is(err, errNoLandlock) {
			os.Exit(exitUnconfinable)
		}
		os.Exit(2)
	}
	if err := hostcompat.ConfineTool(); err != nil {
		fmt.Fprintf(os.Stderr, "pyro: hostwrite: confine: %v\n", err)
		os.Exit(2)
	}
	// The rlimits come last, then exec with nothing allocated between:
	// the Go runtime here already maps more address space (~1.5 GiB of
	// reservations) than RLIMIT_AS allows debugfs, so from the limit on
	// any growth of its heap (a GC cycle's work buffers, a new span) is a
	// fatal "cannot allocate memory", which failed about one run in ten.
	// The collector is off and exec's arguments are built beforehand.
	debug.SetGCPercent(-1)
	argv0, argv, envv, err := execArgs(args[0], args, os.Environ())
	if err != nil {
		fmt.Fprintf(os.Stderr, "pyro: hostwrite: exec %s: %v\n", args[0], err)
		os.Exit(2)
	}
	if err := limit(size); err != nil {
		fmt.Fprintf(os.Stderr, "pyro: hostwrite: limits: %v\n", err)
		os.Exit(2)
	}
	_, _, e := unix.RawSyscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(argv0)), uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])))
	fmt.Fprintf(os.Stderr, "pyro: hostwrite: exec %s: %v\n", args[0], e)
	os.Exit(2)
}

// execArgs converts execve's arguments to the NUL-terminated forms it
// takes (argv and envv end with nil).
func execArgs(path string, args, env []string) (*byte, []*byte, []*byte, error) {
	argv0, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, nil, nil, err
	}
	conv := func(ss []string) ([]*byte, error) {
		out := make([]*byte, 0, len(ss)+1)
		for _, s := range ss {
			p, err := unix.BytePtrFromString(s)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return append(out, nil), nil
	}
	argv, err := conv(args)
	if err != nil {
		return nil, nil, nil, err
	}
	envv, err := conv(env)
	return argv0, argv, envv, err
}

func firstOr(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

var errNoLandlock = errors.New("landlock is not available on this kernel")

// Confinable reports whether this kernel offers Landlock, without which
// Write refuses (ErrUnconfinable) and pushes go through the guest.
func Confinable() bool { return landlockABI() >= 1 }

// landlockABI is the kernel's Landlock ABI version, 0 without Landlock.
func landlockABI() int {
	abi, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if e != 0 {
		return 0
	}
	return int(abi)
}

// rulesetAttr is struct landlock_ruleset_attr up to its scoped field;
// fields an older kernel does not know stay zero, which it accepts.
type rulesetAttr struct {
	fs, net, scoped uint64
}

// programDirs hold debugfs, its shared libraries and the loader's cache.
var programDirs = []string{"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache"}

// landlock confines the calling thread: readOnly (a reader of the image,
// ReadCommand) gets no tree and no write access to the image.
func landlock(readOnly bool) error {
	abi := landlockABI()
	if abi < 1 {
		return errNoLandlock
	}
	var attr rulesetAttr
	attr.fs = 1<<13 - 1 // ABI 1: execute ... make_sym
	if abi >= 2 {
		attr.fs |= unix.LANDLOCK_ACCESS_FS_REFER
	}
	if abi >= 3 {
		attr.fs |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	if abi >= 4 {
		attr.net = unix.LANDLOCK_ACCESS_NET_BIND_TCP | unix.LANDLOCK_ACCESS_NET_CONNECT_TCP
	}
	if abi >= 5 {
		attr.fs |= unix.LANDLOCK_ACCESS_FS_IOCTL_DEV
	}
	if abi >= 6 {
		attr.scoped = unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL
	}
	rs, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr), 0)
	if e != 0 {
		return fmt.Errorf("landlock ruleset: %w", e)
	}
	ruleset := int(rs)
	defer unix.Close(ruleset)
	const read = unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR
	allow := func(fd int, access uint64) error {
		rule := unix.LandlockPathBeneathAttr{Allowed_access: access, Parent_fd: int32(fd)}
		_, _, e := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, uintptr(ruleset), unix.LANDLOCK_RULE_PATH_BENEATH,
			uintptr(unsafe.Pointer(&rule)), 0, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	}
	for _, p := range programDirs {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // not on this system
		}
		var st unix.Stat_t
		access := uint64(unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_READ_FILE)
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			access |= unix.LANDLOCK_ACCESS_FS_READ_DIR
		}
		err = allow(fd, access)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("landlock rule for %s: %w", p, err)
		}
	}
	image := uint64(unix.LANDLOCK_ACCESS_FS_READ_FILE)
	if !readOnly {
		image |= unix.LANDLOCK_ACCESS_FS_WRITE_FILE
		if err := allow(treeFD, read); err != nil {
			return fmt.Errorf("landlock rule for the staged source: %w", err)
		}
	}
	if err := allow(imageFD, image); err != nil {
		return fmt.Errorf("landlock rule for the image: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(ruleset), 0, 0); e != 0 {
		return fmt.Errorf("landlock restrict: %w", e)
	}
	return nil
}
