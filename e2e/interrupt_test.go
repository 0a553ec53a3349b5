package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Interrupted commands leave nothing behind: a reader that goes away (a
// broken pipe), a hangup and a parent that dies are handled like Ctrl-C.
// Each test runs pyro with a private PYRO_HOME and then requires that no
// process of that home is left (checked through /proc) and that its vms/
// and workspaces/ directories are empty.

// cleanupBound is how long an interrupted command may take to stop what it
// started and remove what it made ("a few seconds"; generous for a 2-core
// TCG host shared with other work).
const cleanupBound = 15 * time.Second

// homeProcesses lists "pid cmdline" of processes that belong to a state
// dir: a supervisor (its cmdline names the VM directory), a QEMU (its cwd
// is the VM directory) or a pyro CLI (its environment sets PYRO_HOME).
func homeProcesses(home string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		p := filepath.Join("/proc", e.Name())
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		environ, _ := os.ReadFile(filepath.Join(p, "environ"))
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		if bytes.Contains(cmdline, []byte(home)) || strings.HasPrefix(cwd, home+"/") ||
			bytes.Contains(environ, []byte("\x00PYRO_HOME="+home+"\x00")) || bytes.HasPrefix(environ, []byte("PYRO_HOME="+home+"\x00")) {
			out = append(out, e.Name()+" "+strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " "))
		}
	}
	return out
}

// homeDirs lists what is left under the state dir's vms/ and workspaces/,
// hidden half-deleted directories included.
func homeDirs(home string) []string {
	var out []string
	for _, sub := range []string{"vms", "workspaces"} {
		ents, _ := os.ReadDir(filepath.Join(home, sub))
		for _, e := range ents {
			out = append(out, sub+"/"+e.Name())
		}
	}
	return out
}

// requireNothingLeft waits up to cleanupBound from since for home to hold
// no process and no VM or workspace directory, and fails otherwise. Either
// way, whatever is left is killed so that one failure does not leak guests
// into the next test.
func requireNothingLeft(t *testing.T, home string, since time.Time) {
	t.Helper()
	for {
		procs, dirs := homeProcesses(home), homeDirs(home)
		if len(procs) == 0 && len(dirs) == 0 {
			t.Logf("nothing left %s after the interruption", time.Since(since).Round(time.Millisecond))
			return
		}
		if time.Since(since) > cleanupBound {
			killHome(home)
			t.Fatalf("%s after the interruption, left behind:\n  processes %q\n  directories %q", cleanupBound, procs, dirs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killHome SIGKILLs every process of home.
func killHome(home string) {
	for _, p := range homeProcesses(home) {
		pid, _ := strconv.Atoi(strings.Fields(p)[0])
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// TestInterruptRunBrokenPipe: `pyro run ... | head -1`. head leaves after
// the first line; pyro's next write gets EPIPE and must stop the VM and
// remove its directory, then exit with 141 (128+SIGPIPE), well before the
// guest command would have ended.
func TestInterruptRunBrokenPipe(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	tmp := t.TempDir()
	code, cut := filepath.Join(tmp, "code"), filepath.Join(tmp, "cut")
	script := `{ ` + shellQuote(pyroBin) + ` run --timeout-seconds 120 ` + baseEnv + ` -- 'seq 1 200000; sleep 100'; echo $? >` + code + `; } | { head -1; date +%s.%N >` + cut + `; }`
	sh := exec.Command("sh", "-c", script)
	sh.Env = append(os.Environ(), env...)
	var errb bytes.Buffer
	sh.Stderr = &errb
	killHomeOnCleanup(t, home)
	out, err := runBounded(t, sh, 3*time.Minute)
	t.Logf("stdout %q, stderr %q, err %v", out, errb.String(), err)
	if out != "1\n" {
		t.Fatalf("head printed %q, want the first line", out)
	}
	requireNothingLeft(t, home, readTime(t, cut))
	if c := readFile(t, code); c != "141" {
		t.Errorf("pyro exited %s, want 141 (broken pipe)", c)
	}
	if !strings.Contains(errb.String(), "broken pipe") {
		t.Errorf("stderr does not say why pyro stopped: %q", errb.String())
	}
}

// TestInterruptVMExecBrokenPipe: `pyro vm exec ID -- ... | head -1`. vm
// exec is one-shot (the VM is deleted afterwards): cut short, it must
// still delete the VM, its supervisor and QEMU.
func TestInterruptVMExecBrokenPipe(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	killHomeOnCleanup(t, home)
	v, r := vmJSON(t, env, "create", "--start", baseEnv)
	if r.code != 0 || v.State != "running" {
		t.Fatalf("vm create --start: exit %d, %+v\n%s", r.code, v, r.stderr)
	}
	tmp := t.TempDir()
	code, cut := filepath.Join(tmp, "code"), filepath.Join(tmp, "cut")
	sh := exec.Command("sh", "-c", `{ `+shellQuote(pyroBin)+` vm exec --timeout-seconds 120 `+v.VMID+` -- 'seq 1 200000; sleep 100'; echo $? >`+code+`; } | { head -1; date +%s.%N >`+cut+`; }`)
	sh.Env = append(os.Environ(), env...)
	var errb bytes.Buffer
	sh.Stderr = &errb
	out, err := runBounded(t, sh, 3*time.Minute)
	t.Logf("stdout %q, stderr %q, err %v", out, errb.String(), err)
	if out != "1\n" {
		t.Fatalf("head printed %q, want the first line", out)
	}
	requireNothingLeft(t, home, readTime(t, cut))
	if c := readFile(t, code); c != "141" {
		t.Errorf("pyro vm exec exited %s, want 141 (broken pipe)", c)
	}
}

// baseOnlyHome is isolatedHome with only debian:12-base installed, so that
// `pyro demo` picks it whatever else the shared state dir holds, and its
// output has the same lines every time.
func baseOnlyHome(t *testing.T) (string, []string) {
	t.Helper()
	home := t.TempDir()
	shared := stateDir()
	if err := os.Symlink(filepath.Join(shared, "cache"), filepath.Join(home, "cache")); err != nil {
		t.Fatal(err)
	}
	envs := filepath.Join(home, "environments")
	if err := os.Mkdir(envs, 0o755); err != nil {
		t.Fatal(err)
	}
	const dir = "debian_12-base" // the store's directory for debian:12-base
	if err := os.Symlink(filepath.Join(shared, "environments", dir), filepath.Join(envs, dir)); err != nil {
		t.Fatal(err)
	}
	return home, []string{"PYRO_HOME=" + home}
}

// TestInterruptDemoBrokenPipe: `pyro demo | head -N` at three cut points
// of the demo's output in debian:12-base (see internal/cli/demo.go):
//
//	 5  "(exit 0, boot ...)" of step 1: head leaves as the one-shot run
//	    ends; pyro's next writes (step 2's header, or the line after the
//	    workspace is created) break;
//	 8  "[2/7] workspace create": head leaves while the workspace is
//	    being created, the pipe breaks right after;
//	29  "[6/7] workspace reset": head leaves while the workspace's VM is
//	    being replaced.
//
// After each, the demo's workspace and VMs must be gone and pyro must exit
// with 141 (128+SIGPIPE).
func TestInterruptDemoBrokenPipe(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	for _, cut := range []struct {
		lines int
		last  string // how head's last line starts
	}{
		{5, "      (exit 0, boot "},
		{8, "[2/7] workspace create"},
		{29, "[6/7] workspace reset"},
	} {
		t.Run("head-"+strconv.Itoa(cut.lines), func(t *testing.T) {
			home, env := baseOnlyHome(t)
			tmp := t.TempDir()
			code, cutFile := filepath.Join(tmp, "code"), filepath.Join(tmp, "cut")
			sh := exec.Command("sh", "-c", `{ `+shellQuote(pyroBin)+` demo; echo $? >`+code+`; } | { head -`+strconv.Itoa(cut.lines)+`; date +%s.%N >`+cutFile+`; }`)
			sh.Env = append(os.Environ(), env...)
			var errb bytes.Buffer
			sh.Stderr = &errb
			killHomeOnCleanup(t, home)
			out, err := runBounded(t, sh, 5*time.Minute)
			t.Logf("stdout:\n%s\nstderr %q, err %v", out, errb.String(), err)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != cut.lines || !strings.HasPrefix(lines[len(lines)-1], cut.last) {
				t.Fatalf("head -%d did not end at %q: the demo's output changed? update the cut points", cut.lines, cut.last)
			}
			requireNothingLeft(t, home, readTime(t, cutFile))
			if c := readFile(t, code); c != "141" {
				t.Errorf("pyro demo exited %s, want 141 (broken pipe)", c)
			}
		})
	}
}

// TestInterruptWorkspaceCreateHangup sends SIGHUP (a closed terminal) to
// `pyro workspace create` while its guest boots: afterwards either the
// workspace exists and is listed, or nothing of it remains. pyro stops
// the half-made workspace, so nothing must remain.
func TestInterruptWorkspaceCreateHangup(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	cmd := exec.Command(pyroBin, "workspace", "create", baseEnv)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	killHomeOnCleanup(t, home)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	// During boot: the workspace's QEMU runs, the guest does not answer yet
	// (a TCG boot takes seconds; create also seeds and snapshots after it).
	deadline := time.Now().Add(time.Minute)
	for len(qemuProcessesFor(filepath.Join(home, "workspaces"))) == 0 {
		select {
		case <-done:
			t.Fatalf("workspace create ended before its guest booted: %s%s", out.String(), errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QEMU for the workspace after a minute; left %q", homeDirs(home))
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	hupAt := time.Now()
	select {
	case <-done:
	case <-time.After(cleanupBound):
		killHome(home)
		t.Fatal("pyro workspace create did not exit after SIGHUP")
	}
	t.Logf("exit %d %s after SIGHUP; stdout %q stderr %q", cmd.ProcessState.ExitCode(), time.Since(hupAt).Round(time.Millisecond), out.String(), errb.String())
	requireNothingLeft(t, home, hupAt)
	if cmd.ProcessState.ExitCode() != 129 {
		t.Errorf("exit %d, want 129 (hangup)", cmd.ProcessState.ExitCode())
	}
	var list struct{ Workspaces []any }
	if l := pyro(t, env, "workspace", "list", "--json"); json.Unmarshal([]byte(l.stdout), &list) != nil || len(list.Workspaces) != 0 {
		t.Errorf("workspace list after the hangup: %s", l.stdout)
	}
}

// TestInterruptRunParentKilled kills the shell that started `pyro run`
// with SIGKILL while the guest's output streams: pyro notices it lost its
// parent and cleans up as for Ctrl-C, instead of streaming on to nobody.
func TestInterruptRunParentKilled(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	// "; echo after" keeps sh from exec'ing pyro in its place.
	sh := exec.Command("sh", "-c", shellQuote(pyroBin)+` run --timeout-seconds 120 `+baseEnv+` -- 'while :; do echo tick; sleep 0.2; done'; echo after`)
	sh.Env = append(os.Environ(), env...)
	// A pipe of the test's own, not cmd.StdoutPipe: Wait would close that
	// one, and pyro would then stop on a broken pipe, not on its parent.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A file, not a buffer, for the same reason: Wait would wait for pyro.
	errf, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	sh.Stdout, sh.Stderr = w, errf
	killHomeOnCleanup(t, home)
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	br := bufio.NewReader(r)
	if line, err := br.ReadString('\n'); line != "tick\n" {
		_ = sh.Process.Kill()
		t.Fatalf("guest output did not start: %q %v; stderr %q", line, err, readFile(t, errf.Name()))
	}
	_ = sh.Process.Kill() // SIGKILL: the shell cannot pass anything on
	killedAt := time.Now()
	_ = sh.Wait()
	// pyro, now orphaned, still writes into the pipe: keep draining it so
	// that pyro is never blocked on it nor sees it break.
	go func() { _, _ = io.Copy(io.Discard, br) }()
	requireNothingLeft(t, home, killedAt)
	t.Logf("stderr %q", readFile(t, errf.Name()))
}

// killHomeOnCleanup kills whatever of home is still running when the test
// ends, whatever the outcome.
func killHomeOnCleanup(t *testing.T, home string) {
	t.Cleanup(func() { killHome(home) })
}

// runBounded runs cmd and returns its stdout; it kills cmd after limit.
func runBounded(t *testing.T, cmd *exec.Cmd, limit time.Duration) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(limit, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Wait()
	return out.String(), err
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// readTime reads a `date +%s.%N` stamp.
func readTime(t *testing.T, path string) time.Time {
	t.Helper()
	f, err := strconv.ParseFloat(readFile(t, path), 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(0, int64(f*1e9))
}

// TestInterruptLeftoversReportedByDoctor: what no handler can clean up is
// removed by the next client's reconcile and reported by `pyro doctor`:
// two `pyro run`s killed with SIGKILL leave their VM directories (their
// QEMUs die with them), and a `workspace create` killed with SIGKILL
// during boot leaves a half-made workspace whose VM runs on, detached.
func TestInterruptLeftoversReportedByDoctor(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	killHomeOnCleanup(t, home)
	// Two runs whose guest commands run, and a workspace create during
	// its boot, are then all killed with SIGKILL.
	type run struct {
		cmd *exec.Cmd
		out *bufio.Reader
	}
	var runs []run
	for range 2 {
		cmd := exec.Command(pyroBin, "run", "--timeout-seconds", "120", baseEnv, "--", "echo started; sleep 300")
		cmd.Env = append(os.Environ(), env...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run{cmd, bufio.NewReader(stdout)})
	}
	for _, r := range runs {
		if line, err := r.out.ReadString('\n'); line != "started\n" {
			t.Fatalf("run did not start: %q %v", line, err)
		}
	}
	// Started while the runs live (a client's first call reconciles, and
	// would otherwise remove the runs' leftovers before doctor sees them).
	ws := exec.Command(pyroBin, "workspace", "create", baseEnv)
	ws.Env = append(os.Environ(), env...)
	if err := ws.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); len(qemuProcessesFor(filepath.Join(home, "workspaces"))) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no QEMU for the workspace after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []*exec.Cmd{runs[0].cmd, runs[1].cmd, ws} {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	// The runs' QEMUs die with them (PDEATHSIG); the workspace's VM runs
	// on under its detached supervisor.
	deadline := time.Now().Add(cleanupBound)
	for len(qemuProcessesFor(filepath.Join(home, "vms"))) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if p := qemuProcessesFor(filepath.Join(home, "vms")); len(p) > 0 {
		t.Fatalf("QEMUs outlived their killed pyro run: %q", p)
	}
	if d := homeDirs(home); len(d) != 3 {
		t.Fatalf("expected the two runs' and the workspace's directories, have %q", d)
	}
	if len(homeProcesses(home)) == 0 {
		t.Fatal("the half-made workspace's VM did not outlive its creator: nothing for reconcile to stop")
	}

	var rep struct {
		Checks []struct{ Name, Status, Detail string }
	}
	r := pyro(t, env, "doctor", "--json")
	doneAt := time.Now()
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	found := false
	for _, c := range rep.Checks {
		if c.Name == "leftovers" {
			found = true
			if c.Status != "ok" || c.Detail != "3 leftovers from interrupted runs, removed" {
				t.Errorf("leftovers check: %+v", c)
			}
		}
	}
	if !found {
		t.Errorf("doctor reports no leftovers check: %s", r.stdout)
	}
	requireNothingLeft(t, home, doneAt)
	if h := pyro(t, env, "doctor"); !strings.Contains(h.stdout, "none from interrupted runs") {
		t.Errorf("a second doctor:\n%s", h.stdout)
	}
}
