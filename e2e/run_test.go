package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRunExitCodesAndStreams(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)

	m, r := runJSON(t, env, baseEnv, "--", "sh -c 'echo out; echo err >&2; exit 7'")
	if r.code != 7 || m["exit_code"] != 7.0 {
		t.Fatalf("exit code: process %d, json %v; stderr %s", r.code, m["exit_code"], r.stderr)
	}
	if m["stdout"] != "out\n" || m["stderr"] != "err\n" {
		t.Fatalf("streams not separated: stdout %q stderr %q", m["stdout"], m["stderr"])
	}
	for _, k := range []string{"duration_ms", "environment", "backend", "acceleration", "vm_id"} {
		if _, ok := m[k]; !ok {
			t.Errorf("result lacks %q: %v", k, m)
		}
	}
	if m["backend"] != "qemu" || (m["acceleration"] != "tcg" && m["acceleration"] != "kvm") {
		t.Errorf("backend %v acceleration %v", m["backend"], m["acceleration"])
	}

	// Human mode streams the guest's output and passes the exit code through.
	h := pyro(t, env, "run", baseEnv, "--", "sh", "-c", "echo hello; echo oops >&2; exit 3")
	if h.code != 3 || h.stdout != "hello\n" || !strings.Contains(h.stderr, "oops\n") {
		t.Fatalf("human run: exit %d stdout %q stderr %q", h.code, h.stdout, h.stderr)
	}
	// A missing command is the guest's 127, not a pyro failure.
	h = pyro(t, env, "run", baseEnv, "--", "no-such-command-xyz")
	if h.code != 127 {
		t.Fatalf("missing command: exit %d, stderr %q", h.code, h.stderr)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Fatalf("vm directories left behind: %v", left)
	}
}

func TestRunTruncationAndTimeout(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)

	// 3 MiB of output against the default 1 MiB cap: marked, never silent.
	m, _ := runJSON(t, env, baseEnv, "--", "head -c 3145728 /dev/zero | tr '\\0' x")
	if m["stdout_truncated"] != true {
		t.Fatalf("stdout_truncated = %v", m["stdout_truncated"])
	}
	// The first and last 512 KiB with a marked middle (#17.10).
	marker := "\n[... 2097152 bytes elided ...]\n"
	if out := m["stdout"].(string); len(out) != 1<<20+len(marker) || out[1<<19:1<<19+len(marker)] != marker {
		t.Fatalf("captured %d bytes, want the 1 MiB cap plus the marker %q in the middle", len(out), marker)
	}

	// The timeout kills the whole process group, background children too.
	start := time.Now()
	m, r := runJSON(t, env, "--timeout-seconds", "2", baseEnv, "--", "sleep 300 & sleep 300; echo never")
	if m["timed_out"] != true || r.code != 124 {
		t.Fatalf("timed_out %v exit %d", m["timed_out"], r.code)
	}
	if strings.Contains(m["stdout"].(string), "never") {
		t.Fatal("command ran past its timeout")
	}
	if time.Since(start) > 60*time.Second {
		t.Fatalf("timeout took %s", time.Since(start))
	}
}

func TestRunResources(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	m, _ := runJSON(t, env, "--vcpu-count", "2", "--mem-mib", "768", baseEnv, "--", "nproc; grep MemTotal /proc/meminfo")
	lines := strings.Split(strings.TrimSpace(m["stdout"].(string)), "\n")
	if len(lines) != 2 || lines[0] != "2" {
		t.Fatalf("guest sees %q, want 2 vCPUs", m["stdout"])
	}
	fields := strings.Fields(lines[1])
	kib, _ := strconv.Atoi(fields[1])
	// The kernel reserves some memory; MemTotal lands a bit under -m.
	if kib < 600*1024 || kib > 768*1024 {
		t.Fatalf("MemTotal %d KiB for --mem-mib 768", kib)
	}
	m, _ = runJSON(t, env, baseEnv, "--", "nproc")
	if strings.TrimSpace(m["stdout"].(string)) != "1" {
		t.Fatalf("default vCPUs: %q", m["stdout"])
	}
}

// TestRunNetwork starts a TCP server on the host's loopback. With
// --network the guest has a NIC, but QEMU's old door to the host's
// loopback (10.0.2.2, slirp) is shut: the policed network refuses it and
// says so in the result. Without --network there is no NIC at all.
func TestRunNetwork(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello-from-host\n")
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	probe := fmt.Sprintf("exec 3<>/dev/tcp/10.0.2.2/%d && head -n1 <&3", port)

	m, _ := runJSON(t, env, "--network", baseEnv, "--", "bash", "-c", "ls /sys/class/net; "+probe)
	if m["exit_code"] == 0.0 || strings.Contains(m["stdout"].(string), "hello-from-host") || !strings.Contains(m["stdout"].(string), "eth0") {
		t.Fatalf("with --network: exit %v stdout %q stderr %q", m["exit_code"], m["stdout"], m["stderr"])
	}
	if ds, _ := json.Marshal(m["network_denials"]); !strings.Contains(string(ds), `"10.0.2.2"`) {
		t.Fatalf("with --network: no denial for the host's loopback in %s", ds)
	}
	m, _ = runJSON(t, env, baseEnv, "--", "bash", "-c", "ls /sys/class/net; "+probe)
	if m["exit_code"] == 0.0 {
		t.Fatalf("without --network the guest reached the host: %q", m["stdout"])
	}
	if strings.TrimSpace(strings.Split(m["stdout"].(string), "\n")[0]) != "lo" {
		t.Fatalf("without --network the guest has interfaces %q, want only lo", m["stdout"])
	}
}

// TestRunInterruptCleansUp sends SIGINT (Ctrl-C) and SIGTERM to a running
// `pyro run` and checks no QEMU process and no VM directory remain.
func TestRunInterruptCleansUp(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			home, env := isolatedHome(t)
			cmd := exec.Command(pyroBin, "run", baseEnv, "--", "echo started; sleep 300")
			cmd.Env = append(os.Environ(), env...)
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || line != "started\n" {
				cmd.Process.Kill()
				t.Fatalf("guest did not start: %q %v", line, err)
			}
			if len(qemuProcessesFor(home)) != 1 {
				t.Fatalf("expected one qemu for this run, have %v", qemuProcessesFor(home))
			}
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatal("pyro run did not exit after the signal")
			}
			if cmd.ProcessState.ExitCode() == 0 {
				t.Fatal("interrupted run exited 0")
			}
			if p := qemuProcessesFor(home); len(p) != 0 {
				t.Fatalf("qemu still running: %v", p)
			}
			if left := vmDirs(t, home); len(left) != 0 {
				t.Fatalf("vm directories left: %v", left)
			}
		})
	}
}

func TestRunErrors(t *testing.T) {
	requireE2E(t)
	_, env := isolatedHome(t)
	r := pyro(t, env, "run", "debian:99", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, `"debian:99"`) || !strings.Contains(r.stderr, "pyro env list") || strings.Contains(r.stderr, "goroutine") {
		t.Fatalf("unknown environment: exit %d stderr %q", r.code, r.stderr)
	}
	r = pyro(t, env, "env", "inspect", "nope:1")
	if r.code == 0 || !strings.Contains(r.stderr, "pyro env list") {
		t.Fatalf("inspect unknown: exit %d stderr %q", r.code, r.stderr)
	}
	r = pyro(t, env, "run", baseEnv)
	if r.code != 2 || !strings.Contains(r.stderr, "--") {
		t.Fatalf("missing command: exit %d stderr %q", r.code, r.stderr)
	}
}

// TestCorruptedEnvironmentDetected damages a private copy of an installed
// environment and checks that run and inspect refuse it with a hint.
func TestCorruptedEnvironmentDetected(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home := t.TempDir()
	env := []string{"PYRO_HOME=" + home}
	src := filepath.Join(stateDir(), "environments")
	if out, err := exec.Command("cp", "-a", "--sparse=always", src, filepath.Join(home, "environments")).CombinedOutput(); err != nil {
		t.Fatalf("copy environments: %v %s", err, out)
	}
	kernels, _ := filepath.Glob(filepath.Join(home, "environments", "debian_12-base", "*", "vmlinux"))
	if len(kernels) != 1 {
		t.Fatalf("installed kernel not found: %v", kernels)
	}
	// Flip bytes in the kernel: same size, different digest.
	f, err := os.OpenFile(kernels[0], os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("pyro-corruption"), 4096)
	f.Close()

	r := pyro(t, env, "run", baseEnv, "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "damaged") || !strings.Contains(r.stderr, "pyro env pull") {
		t.Fatalf("run on damaged env: exit %d stderr %q", r.code, r.stderr)
	}
	r = pyro(t, env, "env", "inspect", "--json", baseEnv)
	if !strings.Contains(r.stdout, `"damaged"`) {
		t.Fatalf("inspect does not report damage: %s", r.stdout)
	}
}
