package hostcompat

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The seccomp filter of the commands a host-compat sandbox runs. They share
// the host's kernel, so the filter takes away the kernel interfaces a
// sandbox has no use for and that have a history of escapes or host reach:
// file handles (open_by_handle_at walks from any fd to any inode of its
// filesystem), new namespaces (a nested user namespace hands out fresh
// capabilities), keyrings, eBPF, tracing other processes, mounts, module
// and kexec loading, perf, userfaultfd, io_uring, raw I/O ports, swap,
// reboot, the kernel log, accounting, quotas, device nodes, and AF_VSOCK
// (not network-namespaced: it would reach the host's and other VMs'
// vsock services). Everything else is allowed: the filter is a deny list,
// the namespaces, the user namespace's mapping, the empty capability sets
// and the cgroup do the rest.
//
// The program is classic BPF built here (no cgo, no libseccomp), so it is
// small enough to read: see filterProgram.

// Offsets in struct seccomp_data (little-endian hosts only: amd64, arm64).
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits of args[0]
)

func argOff(i int) uint32 { return uint32(offArg0 + 8*i) }

// BPF opcodes used by the filter.
const (
	bpfLdAbsW = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfJgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	bpfJsetK  = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	bpfAndK   = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
	bpfRetK   = unix.BPF_RET | unix.BPF_K
)

const (
	retAllow = unix.SECCOMP_RET_ALLOW
	retKill  = unix.SECCOMP_RET_KILL_PROCESS
)

func retErrno(e unix.Errno) uint32 { return unix.SECCOMP_RET_ERRNO | uint32(e)&unix.SECCOMP_RET_DATA }

// nsFlags are the namespace-creating clone/unshare flags. CLONE_NEWTIME
// (0x80) is checked for unshare only: in clone's flags that bit belongs to
// the exit signal.
const nsFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// deniedSyscalls fail with EPERM whatever their arguments. The
// architecture-specific ones (iopl, ioperm, mknod, ...) are in
// archDenied.
var deniedSyscalls = []uint32{
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_BPF, unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV,
	unix.SYS_KCMP, unix.SYS_PIDFD_GETFD,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT, unix.SYS_CHROOT, unix.SYS_SETNS,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_MOUNT_SETATTR,
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_REBOOT, unix.SYS_SYSLOG,
	unix.SYS_ACCT, unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD,
	unix.SYS_LOOKUP_DCOOKIE, unix.SYS_NFSSERVCTL,
	unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_ADJTIMEX, unix.SYS_CLOCK_ADJTIME,
	unix.SYS_SETHOSTNAME, unix.SYS_SETDOMAINNAME,
}

// filterProgram returns the seccomp program. Its shape:
//
//	arch != native            -> kill (no 32-bit or x32 entry points)
//	nr in x32 range (amd64)   -> EPERM
//	nr in deniedSyscalls      -> EPERM
//	clone3                    -> ENOSYS (its flags live in memory BPF cannot read;
//	                             libc then falls back to clone)
//	clone with nsFlags        -> EPERM
//	unshare with nsFlags|NEWTIME -> EPERM
//	mknod(at) of a char/block device -> EPERM
//	socket(AF_VSOCK, ...)     -> EAFNOSUPPORT
//	anything else             -> allow
func filterProgram() ([]unix.SockFilter, error) {
	var p []unix.SockFilter
	stmt, jump, err := nativeSyscalls(&p)
	if err != nil {
		return nil, err
	}
	if x32Bit != 0 {
		jump(bpfJgeK, x32Bit, 0, 1)
		stmt(bpfRetK, retErrno(unix.EPERM))
	}
	deny(jump, stmt, deniedSyscalls, archDenied)
	jump(bpfJeqK, unix.SYS_CLONE3, 0, 1)
	stmt(bpfRetK, retErrno(unix.ENOSYS))
	// Each block below decides its syscall: it is skipped (jf) when the
	// number differs, and ends in a return otherwise.
	flagBlock := func(nr uint32, arg int, mask uint32, deny uint32) {
		jump(bpfJeqK, nr, 0, 4)
		stmt(bpfLdAbsW, argOff(arg))
		jump(bpfJsetK, mask, 0, 1)
		stmt(bpfRetK, deny)
		stmt(bpfRetK, retAllow)
	}
	flagBlock(unix.SYS_CLONE, 0, nsFlags, retErrno(unix.EPERM))
	flagBlock(unix.SYS_UNSHARE, 0, nsFlags|unix.CLONE_NEWTIME, retErrno(unix.EPERM))
	deviceBlock := func(nr uint32, modeArg int) {
		jump(bpfJeqK, nr, 0, 6)
		stmt(bpfLdAbsW, argOff(modeArg))
		stmt(bpfAndK, unix.S_IFMT)
		jump(bpfJeqK, unix.S_IFCHR, 1, 0)
		jump(bpfJeqK, unix.S_IFBLK, 0, 1)
		stmt(bpfRetK, retErrno(unix.EPERM))
		stmt(bpfRetK, retAllow)
	}
	deviceBlock(unix.SYS_MKNODAT, 2)
	if sysMknod != 0 {
		deviceBlock(sysMknod, 1)
	}
	jump(bpfJeqK, unix.SYS_SOCKET, 0, 4)
	stmt(bpfLdAbsW, argOff(0))
	jump(bpfJeqK, unix.AF_VSOCK, 0, 1)
	stmt(bpfRetK, retErrno(unix.EAFNOSUPPORT))
	stmt(bpfRetK, retAllow)
	stmt(bpfRetK, retAllow)
	if len(p) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("seccomp program too long (%d instructions)", len(p))
	}
	return p, nil
}

// installFilter sets no_new_privs and installs the filter on the calling
// thread. Callers lock the thread and exec right after: the exec'd program
// (and everything it starts) inherits the filter of the exec'ing thread.
func installFilter() error {
	prog, err := filterProgram()
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	return nil
}

// toolDenied are what a helper that only reads and writes files it was
// handed (internal/hostwrite's debugfs) has no use for and Landlock does
// not confine: a file's metadata (mode, owner, times, extended attributes:
// Landlock governs opens, so a uid-0 tool could chmod /etc/shadow) and
// sockets (a connect to a named unix socket is outside Landlock and the
// network namespace: systemd's, a container daemon's, a supervisor's).
// Also truncate by path (Landlock governs it only from ABI 3, and Main
// accepts ABI 1) and watches on host files (inotify, fanotify: who reads
// what). The architecture's older forms are in archToolDenied.
var toolDenied = []uint32{
	unix.SYS_TRUNCATE, unix.SYS_INOTIFY_ADD_WATCH, unix.SYS_FANOTIFY_INIT,
	unix.SYS_FCHMOD, unix.SYS_FCHMODAT, unix.SYS_FCHMODAT2,
	unix.SYS_FCHOWN, unix.SYS_FCHOWNAT,
	unix.SYS_SETXATTR, unix.SYS_LSETXATTR, unix.SYS_FSETXATTR, unix.SYS_SETXATTRAT,
	unix.SYS_REMOVEXATTR, unix.SYS_LREMOVEXATTR, unix.SYS_FREMOVEXATTR, unix.SYS_REMOVEXATTRAT,
	unix.SYS_UTIMENSAT,
	unix.SYS_SOCKET, unix.SYS_SOCKETPAIR,
}

// toolSyncs are flushes of the tool's files to stable storage, which it
// is told succeeded without doing them: debugfs syncs the image when it
// opens it and again when it closes it (~350 ms of a 196 MiB host push:
// the first flushes the upper layer's copy, the second the written tree),
// and the caller syncs the image once itself before anything refers to it
// (internal/hostwrite.Write).
var toolSyncs = []uint32{unix.SYS_FSYNC, unix.SYS_FDATASYNC, unix.SYS_SYNC_FILE_RANGE, unix.SYS_SYNCFS, unix.SYS_SYNC}

// toolFilterProgram is the filter ConfineTool adds on top of the
// sandbox's: toolDenied and archToolDenied fail with EPERM, and so does a
// new process (clone without CLONE_THREAD; fork and vfork where they
// exist): uid 0 is not held by RLIMIT_NPROC. toolSyncs return 0 undone.
func toolFilterProgram() ([]unix.SockFilter, error) {
	var p []unix.SockFilter
	stmt, jump, err := nativeSyscalls(&p)
	if err != nil {
		return nil, err
	}
	deny(jump, stmt, toolDenied, archToolDenied)
	for _, nr := range toolSyncs {
		jump(bpfJeqK, nr, 0, 1)
		stmt(bpfRetK, retErrno(0))
	}
	jump(bpfJeqK, unix.SYS_CLONE, 0, 4)
	stmt(bpfLdAbsW, argOff(0))
	jump(bpfJsetK, unix.CLONE_THREAD, 1, 0)
	stmt(bpfRetK, retErrno(unix.EPERM))
	stmt(bpfRetK, retAllow)
	stmt(bpfRetK, retAllow)
	return p, nil
}

// ConfineTool is confine (every capability, securebits locked,
// no_new_privs, the sandbox's filter) for a helper that parses hostile input
// with only the descriptors it was handed (internal/hostwrite's debugfs),
// then toolFilterProgram's filter. Same contract: exec
// next, from this goroutine.
func ConfineTool() error {
	if err := confine(); err != nil {
		return err
	}
	prog, err := toolFilterProgram()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("install the tool's seccomp filter: %w", err)
	}
	return nil
}

// nativeSyscalls starts the program *p: a call from another architecture
// is killed, then the syscall number is loaded. stmt and jump append to it.
func nativeSyscalls(p *[]unix.SockFilter) (stmt func(code uint16, k uint32), jump func(code uint16, k uint32, jt, jf uint8), err error) {
	if nativeArch == 0 {
		return nil, nil, fmt.Errorf("no seccomp filter for this architecture")
	}
	stmt = func(code uint16, k uint32) { *p = append(*p, unix.SockFilter{Code: code, K: k}) }
	jump = func(code uint16, k uint32, jt, jf uint8) {
		*p = append(*p, unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k})
	}
	stmt(bpfLdAbsW, offArch)
	jump(bpfJeqK, nativeArch, 1, 0)
	stmt(bpfRetK, retKill)
	stmt(bpfLdAbsW, offNr)
	return stmt, jump, nil
}

// deny makes each syscall of the lists fail with EPERM (the number is
// loaded).
func deny(jump func(code uint16, k uint32, jt, jf uint8), stmt func(code uint16, k uint32), lists ...[]uint32) {
	for _, l := range lists {
		for _, nr := range l {
			jump(bpfJeqK, nr, 0, 1)
			stmt(bpfRetK, retErrno(unix.EPERM))
		}
	}
}
