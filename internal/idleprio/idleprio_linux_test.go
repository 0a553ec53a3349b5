package idleprio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/asnobody"
)

// helperEnv makes the test binary a helper process with several threads
// (a stand-in for QEMU's), which starts one more thread per line it reads.
const helperEnv = "IDLEPRIO_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		in := bufio.NewReader(os.Stdin)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				os.Exit(0)
			}
			if line == "child\n" { // a process in its session that outlives it
				c := exec.Command("sleep", "60")
				if err := c.Start(); err != nil {
					os.Exit(3)
				}
				fmt.Fprintln(os.Stdout, c.Process.Pid)
				continue
			}
			// Goroutines locked to their threads for good, until the
			// runtime had to start a thread (idle ones are reused first).
			n := countThreads()
			for countThreads() == n {
				started := make(chan struct{})
				go func() {
					runtime.LockOSThread() // never unlocked: kept
					close(started)
					select {}
				}()
				<-started
			}
			os.Stdout.Write([]byte("ok\n"))
		}
	}
	os.Exit(m.Run())
}

func countThreads() int {
	ents, _ := os.ReadDir("/proc/self/task")
	return len(ents)
}

// helper starts the helper process; more() makes it start one thread more.
func helper(t *testing.T) (pid int, more func()) {
	pid, ask := helperAsk(t)
	return pid, func() { t.Helper(); ask("\n") }
}

// helperAsk starts the helper process; ask sends it a line and returns
// its answer.
func helperAsk(t *testing.T) (pid int, ask func(string) string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	// A session of its own, as a supervisor has: its autogroup is its own
	// (lowering it must not lower this test).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	out := bufio.NewReader(outp)
	ask = func(line string) string {
		t.Helper()
		if _, err := io.WriteString(in, line); err != nil {
			t.Fatal(err)
		}
		a, err := out.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(a)
	}
	ask("\n") // the helper is up
	return cmd.Process.Pid, ask
}

// policies maps each thread of pid to its policy and nice value.
func policies(t *testing.T, pid int) map[int][2]int {
	t.Helper()
	tids, err := threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int][2]int{}
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Fatal(err)
		}
		out[tid] = [2]int{int(a.Policy), int(a.Nice)}
	}
	return out
}

// setNice puts every thread of pid at nice (the normal policy).
func setNice(t *testing.T, pid, nice int) {
	t.Helper()
	for tid := range policies(t, pid) {
		a := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: int32(nice)}
		if err := unix.SchedSetAttr(tid, &a, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// Every thread goes idle, and comes back as it was: at its own nice value
// (5 here, not the default 0), and so does a thread started while the
// process was lowered (it inherited SCHED_IDLE from its lowered parent).
func TestLowerThenRestoreEveryThread(t *testing.T) {
	pid, more := helper(t)
	setNice(t, pid, 5)
	before := policies(t, pid)
	if len(before) < 2 {
		t.Fatalf("helper has %d threads, want several", len(before))
	}
	l, err := Lower(pid)
	if errors.Is(err, ErrCannotRestore) {
		t.Skip("this user may not raise a priority again (no CAP_SYS_NICE, RLIMIT_NICE): Lower refuses, see TestLowerRefusedWithoutWayBack")
	}
	if err != nil {
		t.Fatal(err)
	}
	for tid, p := range policies(t, pid) {
		if p[0] != unix.SCHED_IDLE {
			t.Errorf("thread %d: policy %d after Lower, want SCHED_IDLE", tid, p[0])
		}
	}
	if n, ok := groupNice(pid); ok && n != groupIdleNice {
		t.Errorf("autogroup at nice %d after Lower, want %d", n, groupIdleNice)
	}
	more() // a thread started while lowered
	during := policies(t, pid)
	if len(during) <= len(before) {
		t.Fatalf("threads %d, then %d: the helper started none", len(before), len(during))
	}
	if err := l.Restore(); err != nil {
		t.Fatal(err)
	}
	after := policies(t, pid)
	for tid, p := range after {
		if p != [2]int{unix.SCHED_NORMAL, 5} {
			t.Errorf("thread %d: policy %d nice %d after Restore, want normal at 5", tid, p[0], p[1])
		}
	}
	if n, ok := groupNice(pid); ok && n != 0 {
		t.Errorf("autogroup at nice %d after Restore, want 0", n)
	}
	if err := l.Restore(); err != nil {
		t.Errorf("second Restore: %v", err)
	}
}

// A user who could not raise the priority again is never let lower it:
// as nobody with RLIMIT_NICE 0 (the default), Lower refuses and the
// process keeps its policy.
func TestLowerRefusedWithoutWayBack(t *testing.T) {
	if asnobody.Rerun(t) {
		return
	}
	if hasCapSysNice() {
		t.Skip("this process holds CAP_SYS_NICE")
	}
	pid, _ := helper(t)
	if err := unix.Prlimit(pid, unix.RLIMIT_NICE, &unix.Rlimit{}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := Lower(pid)
	if !errors.Is(err, ErrCannotRestore) {
		t.Fatalf("Lower without a way back: %v, want ErrCannotRestore", err)
	}
	for tid, p := range policies(t, pid) {
		if p[0] != unix.SCHED_NORMAL {
			t.Errorf("thread %d: policy %d after a refused Lower", tid, p[0])
		}
	}
	if n, ok := groupNice(pid); ok && n != 0 {
		t.Errorf("autogroup at nice %d after a refused Lower", n)
	}
}

// A process that exited while lowered leaves nothing lowered: not its
// session's autogroup either, which another process of the session (as a
// supervisor is to its QEMU) still uses.
func TestRestoreAfterExit(t *testing.T) {
	pid, ask := helperAsk(t)
	child, err := strconv.Atoi(ask("child\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(child, syscall.SIGKILL)
	l, err := Lower(pid)
	if err != nil {
		t.Skip(err)
	}
	if n, ok := groupNice(child); ok && n != groupIdleNice {
		t.Fatalf("the session's other process: autogroup nice %d, want %d", n, groupIdleNice)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil { // reaped: gone
		t.Fatal(err)
	}
	if err := l.Restore(); err != nil {
		t.Fatalf("Restore of an exited process: %v", err)
	}
	if n, ok := groupNice(child); ok && n != 0 {
		t.Errorf("the session's other process: autogroup nice %d after Restore, want 0", n)
	}
}

// A process that exited while lowered may have its pid taken by another
// before Restore runs (the supervisor reaps its QEMU before it puts it
// back; a local user can cycle pids to land on it). Restore must leave
// that process alone: here a process that chose SCHED_IDLE itself keeps
// it, where the old Restore raised its threads to the QEMU's attributes.
func TestRestoreLeavesAReusedPidAlone(t *testing.T) {
	pid, _ := helper(t)
	l, err := Lower(pid)
	if err != nil {
		t.Skip(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil { // reaped: its pid is free
		t.Fatal(err)
	}
	other := startAtPid(t, pid)
	idle := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}
	if err := unix.SchedSetAttr(other, &idle, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Restore(); err != nil {
		t.Fatalf("Restore after the process exited: %v", err)
	}
	if p := policies(t, other)[other]; p[0] != unix.SCHED_IDLE {
		t.Errorf("the process that took pid %d: policy %d after Restore, want its own SCHED_IDLE", other, p[0])
	}
}

// startAtPid starts a process (sleep) at pid, through ns_last_pid (as
// checkpoint/restore tools do; it needs CAP_SYS_ADMIN or
// CAP_CHECKPOINT_RESTORE), trying a few times: any other process of the
// host may take the pid first. It skips the test when it cannot.
func startAtPid(t *testing.T, pid int) int {
	t.Helper()
	for range 50 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next pid: %v", err)
		}
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if c.Process.Pid == pid {
			t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
			return pid
		}
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	t.Skipf("another process took pid %d each time", pid)
	return 0
}
