package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHostPushRunningRestarted: QEMU dies while a host push into the
// running workspace writes its layer, and a command run meanwhile restarts
// the workspace (a fresh guest with /workspace mounted on the old top) and
// writes a file there. The push must not then switch the fresh guest's
// disk under its mounted /workspace: what the command wrote survives a
// restart, and the push is whole or absent.
func TestHostPushRunningRestarted(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := randomTree(t, 100)
	wsExec(t, env, id, "sh", "-c", "echo kept > /workspace/kept.txt")
	push := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
	push.Env = append(os.Environ(), env...)
	var pout, perrb strings.Builder
	push.Stdout, push.Stderr = &pout, &perrb
	if err := push.Start(); err != nil {
		t.Fatal(err)
	}
	// Hold the push's writing debugfs (the guest has let go of /workspace,
	// the host copied its upper layer) and kill QEMU.
	debugfs := 0
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && debugfs == 0; time.Sleep(time.Millisecond) {
		debugfs = childPid(push.Process.Pid, "debugfs")
	}
	if debugfs == 0 {
		push.Process.Kill()
		push.Wait()
		t.Fatal("never caught the push's debugfs running")
	}
	syscall.Kill(debugfs, syscall.SIGSTOP)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", debugfs)); err == nil {
		t.Logf("held: %q", b)
	}
	syscall.Kill(findPids(t, id)["vmm"], syscall.SIGKILL)
	waitBroken(t, env, id)
	// A command meanwhile restarts the workspace and writes /workspace.
	run := exec.Command(pyroBin, "workspace", "--json", "exec", id, "--", "sh", "-c", "echo new > /workspace/new.txt && sync")
	run.Env = append(os.Environ(), env...)
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- run.Wait() }()
	select {
	case err := <-ran:
		t.Logf("the command ran while the push was held: %v", err)
		ran <- err
	case <-time.After(12 * time.Second):
		t.Log("the command waited for the push")
	}
	syscall.Kill(debugfs, syscall.SIGCONT)
	perr := push.Wait()
	t.Logf("the push: %v: %s %s", perr, pout.String(), perrb.String())
	if err := <-ran; err != nil {
		t.Fatalf("the command: %v", err)
	}
	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	m := wsExec(t, env, id, "sh", "-c", "cat /workspace/kept.txt /workspace/new.txt; find /workspace/tree -type f 2>/dev/null | wc -l")
	got := strings.TrimSpace(fmt.Sprint(m["stdout"]))
	if got != "kept\nnew\n0" && got != "kept\nnew\n100" {
		t.Fatalf("after a restart during the push: %q (%v)", got, m)
	}
}

// childPid returns the pid of pid's child running the program name with
// its commands on standard input (-f -; 0: none): the debugfs of a host
// push's checks or of its write.
func childPid(pid int, name string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open || s[open+1:close] != name {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(pid) {
			continue
		}
		if cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.HasSuffix(string(cmd), "\x00-f\x00-\x00") {
			return n
		}
	}
	return 0
}
