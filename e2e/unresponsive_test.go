package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startedMarker is what the guest command writes to its serial console
// before it sleeps, so the test stops the guest during the exec, not the
// boot.
const startedMarker = "pyro-e2e-exec-started"

var stoppedCommand = "echo " + startedMarker + " > /dev/console; sleep 60"

// waitConsole waits until a console.log under root holds the marker.
func waitConsole(t *testing.T, root string, deadline time.Duration) {
	t.Helper()
	end := time.Now().Add(deadline)
	for time.Now().Before(end) {
		logs, _ := filepath.Glob(filepath.Join(root, "*", "*", "console.log"))
		for _, l := range logs {
			if b, _ := os.ReadFile(l); bytes.Contains(b, []byte(startedMarker)) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the guest command never started (no %q on a console under %s)", startedMarker, root)
}

// stopGuest SIGSTOPs the QEMU processes under root (the guest stops
// answering, as a hung VMM would) and resumes them when the test ends.
func stopGuest(t *testing.T, root string) {
	t.Helper()
	pids := qemuProcessesFor(root)
	if len(pids) != 1 {
		t.Fatalf("want one QEMU under %s, found %v", root, pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
}

// startPyro starts the binary and returns a channel with its result.
func startPyro(t *testing.T, env []string, args ...string) (<-chan result, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(pyroBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan result, 1)
	go func() {
		err := cmd.Wait()
		r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		}
		ch <- r
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return ch, cmd
}

// checkUnavailable asserts a clear timeout error: exit 6, category
// unavailable, a message that says the guest stopped answering, a hint.
func checkUnavailable(t *testing.T, r result, stoppedAt time.Time) {
	t.Helper()
	var m struct {
		Error struct{ Message, Category string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("not a JSON error (exit %d): %s %s", r.code, r.stdout, r.stderr)
	}
	if r.code != 6 || m.Error.Category != "unavailable" || !strings.Contains(m.Error.Message, "stopped answering") || !strings.Contains(m.Error.Message, "(hint: ") {
		t.Fatalf("exit %d, error %+v", r.code, m.Error)
	}
	t.Logf("failed %s after the guest stopped: %s", time.Since(stoppedAt).Round(100*time.Millisecond), m.Error.Message)
}

// A workspace exec whose guest stops answering (the VMM SIGSTOPped) fails
// with unavailable within its timeout plus a few seconds (#12.10), instead
// of hanging for as long as the guest stays stopped.
func TestWorkspaceExecUnresponsive(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)

	done, _ := startPyro(t, env, "workspace", "exec", "--json", "--timeout-seconds", "3", id, "--", stoppedCommand)
	waitConsole(t, home, 30*time.Second)
	stopGuest(t, home)
	stoppedAt := time.Now()
	select {
	case r := <-done:
		checkUnavailable(t, r, stoppedAt)
		if time.Since(stoppedAt) > 12*time.Second {
			t.Fatalf("took %s", time.Since(stoppedAt))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("workspace exec still waits 30 s after its guest stopped answering (timeout 3 s)")
	}
}

// The same for pyro run, whose VM is then killed: no QEMU and no VM
// directory are left behind.
func TestRunUnresponsive(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)

	done, _ := startPyro(t, env, "run", "--json", "--timeout-seconds", "3", baseEnv, "--", stoppedCommand)
	waitConsole(t, home, 60*time.Second)
	stopGuest(t, home)
	stoppedAt := time.Now()
	select {
	case r := <-done:
		checkUnavailable(t, r, stoppedAt)
		if time.Since(stoppedAt) > 15*time.Second {
			t.Fatalf("took %s", time.Since(stoppedAt))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pyro run still waits 30 s after its guest stopped answering (timeout 3 s)")
	}
	if pids := qemuProcessesFor(home); len(pids) != 0 {
		t.Fatalf("QEMU left running: %v", pids)
	}
	if dirs := vmDirs(t, home); len(dirs) != 0 {
		t.Fatalf("VM directories left: %v", dirs)
	}
}
