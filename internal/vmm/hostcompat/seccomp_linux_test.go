package hostcompat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// runFilter interprets the filter on one seccomp_data, as the kernel would
// (only the instructions filterProgram emits).
func runFilter(t *testing.T, prog []unix.SockFilter, nr, arch uint32, args ...uint64) uint32 {
	t.Helper()
	data := make([]byte, 64)
	binary.LittleEndian.PutUint32(data[offNr:], nr)
	binary.LittleEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(data[offArg0+8*i:], a)
	}
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case bpfLdAbsW:
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case bpfAndK:
			acc &= in.K
		case bpfJeqK, bpfJgeK, bpfJsetK:
			var ok bool
			switch in.Code {
			case bpfJeqK:
				ok = acc == in.K
			case bpfJgeK:
				ok = acc >= in.K
			default:
				ok = acc&in.K != 0
			}
			if ok {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case bpfRetK:
			return in.K
		default:
			t.Fatalf("instruction %d: unexpected opcode %#x", pc, in.Code)
		}
	}
	t.Fatal("program fell off its end")
	return 0
}

func TestFilterDecisions(t *testing.T) {
	if nativeArch == 0 {
		t.Skip("no filter for this architecture")
	}
	prog, err := filterProgram()
	if err != nil {
		t.Fatal(err)
	}
	eperm := retErrno(unix.EPERM)
	cases := []struct {
		name string
		nr   uint32
		args []uint64
		want uint32
	}{
		{"getpid", unix.SYS_GETPID, nil, retAllow},
		{"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT, nil, eperm},
		{"name_to_handle_at", unix.SYS_NAME_TO_HANDLE_AT, nil, eperm},
		{"keyctl", unix.SYS_KEYCTL, nil, eperm},
		{"bpf", unix.SYS_BPF, nil, eperm},
		{"ptrace", unix.SYS_PTRACE, nil, eperm},
		{"mount", unix.SYS_MOUNT, nil, eperm},
		{"setns", unix.SYS_SETNS, nil, eperm},
		{"finit_module", unix.SYS_FINIT_MODULE, nil, eperm},
		{"kexec_load", unix.SYS_KEXEC_LOAD, nil, eperm},
		{"perf_event_open", unix.SYS_PERF_EVENT_OPEN, nil, eperm},
		{"userfaultfd", unix.SYS_USERFAULTFD, nil, eperm},
		{"io_uring_setup", unix.SYS_IO_URING_SETUP, nil, eperm},
		{"clone3", unix.SYS_CLONE3, nil, retErrno(unix.ENOSYS)},
		{"clone thread", unix.SYS_CLONE, []uint64{unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD}, retAllow},
		{"fork via clone", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, retAllow},
		{"clone new user ns", unix.SYS_CLONE, []uint64{unix.CLONE_NEWUSER | uint64(unix.SIGCHLD)}, eperm},
		{"clone new net ns", unix.SYS_CLONE, []uint64{unix.CLONE_NEWNET}, eperm},
		{"unshare files", unix.SYS_UNSHARE, []uint64{unix.CLONE_FILES}, retAllow},
		{"unshare user ns", unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWUSER}, eperm},
		{"unshare time ns", unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWTIME}, eperm},
		{"mknodat fifo", unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFIFO | 0o644}, retAllow},
		{"mknodat char dev", unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFCHR | 0o644}, eperm},
		{"mknodat block dev", unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFBLK | 0o600}, eperm},
		{"socket inet", unix.SYS_SOCKET, []uint64{unix.AF_INET}, retAllow},
		{"socket vsock", unix.SYS_SOCKET, []uint64{unix.AF_VSOCK}, retErrno(unix.EAFNOSUPPORT)},
	}
	if sysMknod != 0 {
		cases = append(cases, struct {
			name string
			nr   uint32
			args []uint64
			want uint32
		}{"mknod char dev", sysMknod, []uint64{0, unix.S_IFCHR | 0o644}, eperm})
	}
	if x32Bit != 0 {
		cases = append(cases, struct {
			name string
			nr   uint32
			args []uint64
			want uint32
		}{"x32 getpid", x32Bit | unix.SYS_GETPID, nil, eperm})
	}
	for _, c := range cases {
		if got := runFilter(t, prog, c.nr, nativeArch, c.args...); got != c.want {
			t.Errorf("%s: got %#x, want %#x", c.name, got, c.want)
		}
	}
	if got := runFilter(t, prog, unix.SYS_GETPID, 0x40000003 /* AUDIT_ARCH_I386 */); got != retKill {
		t.Errorf("foreign architecture: got %#x, want kill", got)
	}
}

// TestFilterInKernel installs the filter in a child process (this test
// binary again) and makes the real syscalls.
func TestFilterInKernel(t *testing.T) {
	if nativeArch == 0 {
		t.Skip("no filter for this architecture")
	}
	if os.Getenv("PYRO_SECCOMP_CHILD") == "1" {
		seccompChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFilterInKernel$", "-test.v")
	cmd.Env = append(os.Environ(), "PYRO_SECCOMP_CHILD=1", "PYRO_SECCOMP_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "seccomp child done") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func seccompChild(t *testing.T) {
	runtime.LockOSThread() // the filter is on this thread only
	if err := installFilter(); err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("PYRO_SECCOMP_DIR")
	check := func(name string, err, want error) {
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	check("unshare(CLONE_NEWUSER)", unix.Unshare(unix.CLONE_NEWUSER), unix.EPERM)
	check("unshare(CLONE_NEWNS)", unix.Unshare(unix.CLONE_NEWNS), unix.EPERM)
	_, _, e := unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)
	check("clone3", errnoErr(e), unix.ENOSYS)
	_, _, e = unix.Syscall6(unix.SYS_OPEN_BY_HANDLE_AT, 0, 0, 0, 0, 0, 0)
	check("open_by_handle_at", errnoErr(e), unix.EPERM)
	_, _, e = unix.Syscall6(unix.SYS_KEYCTL, 0, 0, 0, 0, 0, 0)
	check("keyctl", errnoErr(e), unix.EPERM)
	_, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	check("socket(AF_VSOCK)", err, unix.EAFNOSUPPORT)
	check("mknodat char device", unix.Mknodat(unix.AT_FDCWD, filepath.Join(dir, "c"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))), unix.EPERM)
	check("mknodat fifo", unix.Mknodat(unix.AT_FDCWD, filepath.Join(dir, "f"), unix.S_IFIFO|0o600, 0), nil)
	if v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || v != 1 {
		t.Errorf("no_new_privs = %d, %v", v, err)
	}
	fmt.Println("seccomp child done")
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// The tool's filter (ConfineTool) refuses what Landlock does not govern
// on every kernel Main accepts, and lets a thread be made.
func TestToolFilterDecisions(t *testing.T) {
	if nativeArch == 0 {
		t.Skip("no filter for this architecture")
	}
	prog, err := toolFilterProgram()
	if err != nil {
		t.Fatal(err)
	}
	eperm := retErrno(unix.EPERM)
	for _, c := range []struct {
		name string
		nr   uint32
		args []uint64
		want uint32
	}{
		{"read", unix.SYS_READ, nil, retAllow},
		{"pwrite64", unix.SYS_PWRITE64, nil, retAllow},
		{"ftruncate", unix.SYS_FTRUNCATE, nil, retAllow},
		{"clone thread", unix.SYS_CLONE, []uint64{unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD}, retAllow},
		{"fork via clone", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, eperm},
		{"fchmodat", unix.SYS_FCHMODAT, nil, eperm},
		{"fchownat", unix.SYS_FCHOWNAT, nil, eperm},
		{"utimensat", unix.SYS_UTIMENSAT, nil, eperm},
		{"setxattr", unix.SYS_SETXATTR, nil, eperm},
		{"socket", unix.SYS_SOCKET, []uint64{unix.AF_UNIX}, eperm},
		{"truncate", unix.SYS_TRUNCATE, nil, eperm},
		{"inotify_add_watch", unix.SYS_INOTIFY_ADD_WATCH, nil, eperm},
		{"fanotify_init", unix.SYS_FANOTIFY_INIT, nil, eperm},
		// Syncs succeed undone: the caller of the tool syncs once.
		{"fsync", unix.SYS_FSYNC, nil, retErrno(0)},
		{"fdatasync", unix.SYS_FDATASYNC, nil, retErrno(0)},
		{"syncfs", unix.SYS_SYNCFS, nil, retErrno(0)},
		{"sync_file_range", unix.SYS_SYNC_FILE_RANGE, nil, retErrno(0)},
	} {
		if got := runFilter(t, prog, c.nr, nativeArch, c.args...); got != c.want {
			t.Errorf("%s: got %#x, want %#x", c.name, got, c.want)
		}
	}
	if got := runFilter(t, prog, unix.SYS_GETPID, 0x40000003 /* AUDIT_ARCH_I386 */); got != retKill {
		t.Errorf("foreign architecture: got %#x, want kill", got)
	}
}
