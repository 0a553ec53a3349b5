package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostCompatArg is the hidden argument of the host-compat sandbox processes
// (hostcompat.HiddenArg; e2e talks to the binary only).
const hostCompatArg = "__pyro-hostcompat"

// noQEMU makes every guest boot impossible (qemu.Binary honours PYRO_QEMU).
const noQEMU = "PYRO_QEMU=/nonexistent/qemu"

// hostCompatInits lists the pids of host-compat sandbox inits whose VM
// directory is under root.
func hostCompatInits(root string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && args[1] == hostCompatArg && strings.Contains(string(b), root) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// processesInPIDNS lists pids living in the PID namespace ns (as read from
// /proc/PID/ns/pid).
func processesInPIDNS(ns string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "pid")); err == nil && l == ns {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func rootfsImage(t *testing.T, env string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(stateDir(), "environments", strings.ReplaceAll(env, ":", "_"), "*", "rootfs.ext4"))
	if len(m) == 0 {
		t.Fatalf("no root image for %s under %s", env, stateDir())
	}
	return m[len(m)-1]
}

func TestHostCompatRequiresFlag(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	r := pyro(t, append(env, noQEMU), "run", baseEnv, "--", "true")
	if r.code == 0 {
		t.Fatalf("run without qemu and without --allow-host-compat succeeded:\n%s%s", r.stdout, r.stderr)
	}
	for _, want := range []string{"qemu", "--allow-host-compat"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("error does not mention %q:\n%s", want, r.stderr)
		}
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("vm directories left: %v", left)
	}
}

func TestHostCompatRun(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	env = append(env, noQEMU)
	image := rootfsImage(t, baseEnv)
	before := sha256File(t, image)

	m, r := runJSON(t, env, "--allow-host-compat", baseEnv, "--", "sh", "-c", "echo hi; hostname; ls /sys/class/net")
	t.Logf("host-compat run took %s (boot_ms %v)", r.elapsed.Round(time.Millisecond), m["boot_ms"])
	if r.code != 0 || m["exit_code"] != float64(0) {
		t.Fatalf("exit %d / %v\nstdout: %s\nstderr: %s", r.code, m["exit_code"], r.stdout, r.stderr)
	}
	if got, want := m["stdout"], "hi\npyro\nlo\n"; got != want {
		t.Errorf("stdout %q, want %q (hostname pyro, only lo without --network)", got, want)
	}
	for k, want := range map[string]string{"backend": "host", "isolation": "namespaces", "acceleration": "none"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %q", k, m[k], want)
		}
	}
	ws, _ := m["warnings"].([]any)
	found := false
	for _, w := range ws {
		if s, _ := w.(string); strings.Contains(s, "host-compat: weaker isolation") {
			found = true
		}
	}
	if !found {
		t.Errorf("no host-compat warning in %v", m["warnings"])
	}

	// The root is a per-run overlay: a file written in one run is gone in
	// the next, and the image is never written.
	m, r = runJSON(t, env, "--allow-host-compat", baseEnv, "--", "sh", "-c", "echo x > /pyro-marker && rm -f /etc/hostname && ls /pyro-marker")
	if m["exit_code"] != float64(0) {
		t.Fatalf("write run: %v\n%s%s", m["exit_code"], r.stdout, r.stderr)
	}
	m, r = runJSON(t, env, "--allow-host-compat", baseEnv, "--", "sh", "-c", "test ! -e /pyro-marker && test -e /etc/hostname")
	if m["exit_code"] != float64(0) {
		t.Errorf("changes from the previous run are visible: %v\n%s%s", m["exit_code"], r.stdout, r.stderr)
	}
	if after := sha256File(t, image); after != before {
		t.Errorf("root image %s changed: %s -> %s", image, before, after)
	}

	if p := hostCompatInits(home); len(p) != 0 {
		t.Errorf("sandbox processes left: %v", p)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("vm directories left: %v", left)
	}
}

func TestHostCompatNetwork(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	m, r := runJSON(t, append(env, noQEMU), "--allow-host-compat", "--network", baseEnv, "--", "sh", "-c", "ls /sys/class/net; test -s /etc/resolv.conf")
	if m["exit_code"] != float64(0) {
		t.Fatalf("exit %v\n%s%s", m["exit_code"], r.stdout, r.stderr)
	}
	if s, _ := m["stdout"].(string); strings.TrimSpace(s) == "lo" {
		t.Errorf("--network should share the host's interfaces, saw only lo")
	}
	if ws, _ := m["warnings"].([]any); len(ws) == 0 || !strings.Contains(ws[0].(string), "host network") {
		t.Errorf("warnings do not say the host network is shared: %v", m["warnings"])
	}
}

func TestHostCompatInterruptCleansUp(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	cmd := exec.Command(pyroBin, "run", "--allow-host-compat", baseEnv, "--", "echo started; sleep 300 & sleep 300")
	cmd.Env = append(os.Environ(), append(env, noQEMU)...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "started\n" {
		cmd.Process.Kill()
		t.Fatalf("sandbox did not start: %q %v", line, err)
	}
	inits := hostCompatInits(home)
	if len(inits) != 1 {
		cmd.Process.Kill()
		t.Fatalf("expected one sandbox init for this run, have %v", inits)
	}
	ns, err := os.Readlink(filepath.Join("/proc", inits[0], "ns", "pid"))
	if err != nil {
		t.Fatal(err)
	}
	// init, agent server, sh and the sleeps: "started" is printed before
	// sh has forked them, so give it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for len(processesInPIDNS(ns)) < 4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if p := processesInPIDNS(ns); len(p) < 4 {
		t.Errorf("expected the sandbox's processes in %s, have %v", ns, p)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pyro run did not exit after SIGINT")
	}
	if cmd.ProcessState.ExitCode() == 0 {
		t.Fatal("interrupted run exited 0")
	}
	if p := processesInPIDNS(ns); len(p) != 0 {
		t.Fatalf("processes left in the sandbox's PID namespace: %v", p)
	}
	if p := hostCompatInits(home); len(p) != 0 {
		t.Fatalf("sandbox processes left: %v", p)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("vm directories left: %v", left)
	}
}
