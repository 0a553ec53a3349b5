package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type vmStatus struct {
	VMID          string `json:"vm_id"`
	State         string `json:"state"`
	Reason        string `json:"reason"`
	SupervisorPID int    `json:"supervisor_pid"`
	VMMPID        int    `json:"vmm_pid"`
	Acceleration  string `json:"acceleration"`
}

func vmJSON(t *testing.T, env []string, args ...string) (vmStatus, result) {
	t.Helper()
	r := pyro(t, env, append([]string{"vm"}, append(args, "--json")...)...)
	var v vmStatus
	if r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatalf("vm %v: %v: %s", args, err, r.stdout)
		}
	}
	return v, r
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && s[i+2] != 'Z'
}

// waitGone waits (bounded) until none of pids is alive.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		any := false
		for _, p := range pids {
			any = any || alive(p)
		}
		if !any {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("processes still alive: %v", pids)
}

func TestVMLifecycle(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)

	v, r := vmJSON(t, env, "create", baseEnv)
	if r.code != 0 || v.State != "created" {
		t.Fatalf("create: %d %q %s", r.code, v.State, r.stderr)
	}
	id := v.VMID
	v, r = vmJSON(t, env, "start", id)
	if r.code != 0 || v.State != "running" || !alive(v.SupervisorPID) || !alive(v.VMMPID) {
		t.Fatalf("start: %d %+v %s", r.code, v, r.stderr)
	}
	again, _ := vmJSON(t, env, "start", id)
	if again.State != "running" || again.VMMPID != v.VMMPID {
		t.Fatalf("second start is not a no-op: %+v", again)
	}
	n := pyro(t, env, "vm", "network", "--json", id)
	if !strings.Contains(n.stdout, `"mode": "none"`) {
		t.Fatalf("network info: %s", n.stdout)
	}
	st, _ := vmJSON(t, env, "stop", id)
	if st.State != "stopped" {
		t.Fatalf("stop: %+v", st)
	}
	waitGone(t, v.SupervisorPID, v.VMMPID)
	if st2, _ := vmJSON(t, env, "stop", id); st2.State != "stopped" {
		t.Fatalf("second stop: %+v", st2)
	}
	// Exec on a stopped VM: failed precondition with a hint.
	r = pyro(t, env, "vm", "exec", id, "--", "true")
	if r.code != 5 || !strings.Contains(r.stderr, "hint") || !strings.Contains(r.stderr, "stopped") {
		t.Fatalf("exec on stopped vm: %d %s", r.code, r.stderr)
	}
	// Start again, exec (auto-cleans), and the VM is gone.
	v, _ = vmJSON(t, env, "start", id)
	if v.State != "running" {
		t.Fatalf("restart: %+v", v)
	}
	m := pyro(t, env, "vm", "exec", "--json", id, "--", "sh", "-c", "echo hi; exit 4")
	if m.code != 4 || !strings.Contains(m.stdout, `"stdout": "hi\n"`) {
		t.Fatalf("exec: %d %s %s", m.code, m.stdout, m.stderr)
	}
	waitGone(t, v.SupervisorPID, v.VMMPID)
	if _, r = vmJSON(t, env, "status", id); r.code != 3 || !strings.Contains(r.stderr, `"`+id+`"`) {
		t.Fatalf("status after auto-clean: %d %s", r.code, r.stderr)
	}
	if _, r = vmJSON(t, env, "delete", id); r.code != 3 {
		t.Fatalf("delete of deleted vm: %d %s", r.code, r.stderr)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}

func TestVMTTLAndReap(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	// The TTL counts from creation and includes the boot: the snapshot is
	// made first, so the start is a restore, not a boot and a save (which
	// a new guest command line or QEMU makes the first start do).
	if r := pyro(t, env, "prepare", baseEnv); r.code != 0 {
		t.Fatalf("prepare: %d %s", r.code, r.stderr)
	}
	v, r := vmJSON(t, env, "create", "--start", "--ttl-seconds", "10", baseEnv)
	if r.code != 0 || v.State != "running" {
		t.Fatalf("create --start: %d %+v %s", r.code, v, r.stderr)
	}
	waitGone(t, v.SupervisorPID, v.VMMPID)
	st, _ := vmJSON(t, env, "status", v.VMID)
	if st.State != "expired" {
		t.Fatalf("after ttl: %+v", st)
	}
	r = pyro(t, env, "vm", "reap", "--json")
	if !strings.Contains(r.stdout, v.VMID) || !strings.Contains(r.stdout, `"count": 1`) {
		t.Fatalf("reap: %s %s", r.stdout, r.stderr)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}

// TestVMKill9 kills the supervisor, then (in a second VM) the VMM, in the
// middle of an exec: the caller gets an error, not a hang; status says
// broken with a reason; delete cleans up; no process is left.
func TestVMKill9(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	for _, victim := range []string{"supervisor", "vmm"} {
		t.Run(victim, func(t *testing.T) {
			v, r := vmJSON(t, env, "create", "--start", baseEnv)
			if r.code != 0 {
				t.Fatalf("create: %s", r.stderr)
			}
			cmd := exec.Command(pyroBin, "vm", "exec", v.VMID, "--", "sleep 120")
			cmd.Env = append(os.Environ(), env...)
			var out strings.Builder
			cmd.Stderr = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1500 * time.Millisecond) // the exec is under way
			pid := v.SupervisorPID
			if victim == "vmm" {
				pid = v.VMMPID
			}
			syscall.Kill(pid, syscall.SIGKILL)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("exec hung after kill -9 of the " + victim)
			}
			if cmd.ProcessState.ExitCode() == 0 {
				t.Fatalf("exec succeeded after kill -9 of the %s", victim)
			}
			waitGone(t, v.SupervisorPID, v.VMMPID)
			st, _ := vmJSON(t, env, "status", v.VMID)
			if victim == "supervisor" && st.State != "broken" {
				// exec's auto-clean may already have removed it
				if _, err := os.Stat(filepath.Join(home, "vms", v.VMID)); err == nil {
					t.Fatalf("status after kill: %+v", st)
				}
			}
			if st.State != "" && st.Reason == "" {
				t.Fatalf("broken without a reason: %+v", st)
			}
			pyro(t, env, "vm", "delete", v.VMID)
			if len(qemuProcessesFor(home)) != 0 {
				t.Fatalf("qemu left: %v", qemuProcessesFor(home))
			}
		})
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}

// TestVMConcurrentCreate creates ten VMs from ten processes at once.
func TestVMConcurrentCreate(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	var wg sync.WaitGroup
	ids := make(chan string, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(pyroBin, "vm", "create", "--json", "--mem-mib", "256", baseEnv)
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.Output()
			var v vmStatus
			if err == nil && json.Unmarshal(out, &v) == nil {
				ids <- v.VMID
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		seen[id] = true
	}
	if len(seen) != 10 {
		t.Fatalf("created %d distinct VMs, want 10", len(seen))
	}
	r := pyro(t, env, "vm", "list", "--json")
	var list struct{ VMs []vmStatus }
	json.Unmarshal([]byte(r.stdout), &list)
	if len(list.VMs) != 10 {
		t.Fatalf("list has %d", len(list.VMs))
	}
	// Start two at a time (each TCG vCPU needs a core), then delete all.
	var starts sync.WaitGroup
	i := 0
	for id := range seen {
		if i >= 2 {
			break
		}
		i++
		starts.Add(1)
		go func(id string) {
			defer starts.Done()
			cmd := exec.Command(pyroBin, "vm", "start", id)
			cmd.Env = append(os.Environ(), env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("start %s: %v %s", id, err, out)
			}
		}(id)
	}
	starts.Wait()
	for id := range seen {
		if r := pyro(t, env, "vm", "delete", id); r.code != 0 {
			t.Errorf("delete %s: %s", id, r.stderr)
		}
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if len(qemuProcessesFor(home)) != 0 {
		t.Fatal("qemu left running")
	}
}

// TestVMDeepStateDir: socket paths stay usable however deep the state dir.
func TestVMDeepStateDir(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, _ := isolatedHome(t)
	deep := filepath.Join(home, strings.Repeat("a-rather-long-directory-name/", 6))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"environments", "cache"} {
		target, _ := os.Readlink(filepath.Join(home, d))
		os.Symlink(target, filepath.Join(deep, d))
	}
	env := []string{"PYRO_HOME=" + deep}
	v, r := vmJSON(t, env, "create", "--start", baseEnv)
	if r.code != 0 || v.State != "running" {
		t.Fatalf("deep state dir (%d bytes): %d %s", len(deep), r.code, r.stderr)
	}
	if m := pyro(t, env, "vm", "exec", v.VMID, "--", "echo", "deep"); m.code != 0 || m.stdout != "deep\n" {
		t.Fatalf("exec: %d %q %s", m.code, m.stdout, m.stderr)
	}
}
