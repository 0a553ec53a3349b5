package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostCompatArg is the hidden argument of the host-compat sandbox processes
// (hostcompat.HiddenArg; e2e talks to the binary only).
const hostCompatArg = "__pyro-hostcompat"

// noQEMU makes every guest boot impossible (qemu.Binary honours PYRO_QEMU).
const noQEMU = "PYRO_QEMU=/nonexistent/qemu"

// hostCompatInits lists the pids of host-compat sandbox inits (the host
// side of each sandbox) whose VM directory is under root.
func hostCompatInits(root string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 3 && args[1] == hostCompatArg && args[2] == "init" && strings.Contains(args[3], root) {
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

// TestHostCompatNetworkRefused: host-compat has no network of its own to
// give (the host's would reach its loopback services and routes), so a
// request for one is refused with a hint instead of sharing the host's.
func TestHostCompatNetworkRefused(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	r := pyro(t, append(env, noQEMU), "run", "--allow-host-compat", "--network", baseEnv, "--", "ls", "/sys/class/net")
	if r.code == 0 {
		t.Fatalf("host-compat run with --network succeeded (the host's network namespace?):\n%s%s", r.stdout, r.stderr)
	}
	for _, want := range []string{`backend "host" has no network it can police`, "without --network"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("error does not say %q:\n%s", want, r.stderr)
		}
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("vm directories left: %v", left)
	}
}

// sandboxPIDNS is the PID namespace of the sandbox under the host-compat
// init initPid (the init's child in a namespace of its own).
func sandboxPIDNS(t *testing.T, initPid string) string {
	t.Helper()
	own, _ := os.Readlink(filepath.Join("/proc", initPid, "ns", "pid"))
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil || !strings.Contains(string(b), "\nPPid:\t"+initPid+"\n") {
			continue
		}
		if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "pid")); err == nil && ns != own {
			return ns
		}
	}
	t.Fatalf("no sandbox PID namespace under init %s", initPid)
	return ""
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
	ns := sandboxPIDNS(t, inits[0])
	// PID 1, agent server, sh and the sleeps: "started" is printed before
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

// buildProbe builds testdata/hostcompat-probe as a static binary into dir.
func buildProbe(t *testing.T, dir string) {
	t.Helper()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "probe"), "./testdata/hostcompat-probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
}

// cgroupSandboxes lists the sandbox cgroups pyro has on this host.
func cgroupSandboxes() []string {
	var all []string
	for _, pat := range []string{"/sys/fs/cgroup/pyro/*", "/sys/fs/cgroup/*/pyro/*"} {
		m, _ := filepath.Glob(pat)
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				all = append(all, d)
			}
		}
	}
	return all
}

// TestHostCompatSandboxHolds runs a static binary in a host-compat
// workspace that tries what broke out of the old sandbox (an fd on the
// host's filesystem from /proc/1/exe, then open_by_handle_at to a host
// directory, reading a 0600 host file and writing a new one), and checks
// the confinement a command gets: no capabilities, no_new_privs, seccomp,
// and cgroup limits on processes and memory.
func TestHostCompatSandboxHolds(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	env = append(env, noQEMU)

	// The marker sits next to the pyro binary: /proc/1/exe in the old
	// sandbox was an fd on that filesystem.
	hostDir, err := os.MkdirTemp(filepath.Dir(pyroBin), "hostcompat-marker-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(hostDir)
	const secret = "host-secret-4711"
	marker := filepath.Join(hostDir, "marker")
	if err := os.WriteFile(marker, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	written := filepath.Join(hostDir, "written-from-sandbox")
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, hostDir, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at %s (the filesystem must support file handles): %v", hostDir, err)
	}
	handle := fmt.Sprintf("%d:%x", h.Type(), h.Bytes())

	seed := t.TempDir()
	buildProbe(t, seed)
	before := cgroupSandboxes()
	var w wsStatus
	mustWS(t, env, &w, "create", "--allow-host-compat", "--mem-mib", "256", "--seed-path", seed, baseEnv)
	defer ws(t, env, nil, "delete", w.WorkspaceID)

	m := wsExec(t, env, w.WorkspaceID, "./probe", "escape", handle, "marker", filepath.Base(written), marker)
	out, _ := m["stdout"].(string)
	t.Logf("escape attempts:\n%s%v", out, m["stderr"])
	for _, step := range []string{"open-proc1-exe", "open-by-handle", "read-host-marker-by-path", "write-host-file-by-path"} {
		if !strings.Contains(out, step+" denied") {
			t.Errorf("%s was not denied", step)
		}
	}
	if strings.Contains(out, "ESCAPED") || strings.Contains(out, secret) {
		t.Errorf("the sandbox reached the host:\n%s", out)
	}
	if _, err := os.Stat(written); err == nil {
		t.Errorf("the sandbox wrote %s on the host", written)
	}

	// A nested user namespace would hand out a fresh set of capabilities.
	if m := wsExec(t, env, w.WorkspaceID, "unshare", "--user", "--map-root-user", "true"); m["exit_code"] == float64(0) {
		t.Errorf("a command created a user namespace: %v", m)
	}

	m = wsExec(t, env, w.WorkspaceID, "cat", "/proc/self/status")
	status, _ := m["stdout"].(string)
	for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
		"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(status, want+"\n") {
			t.Errorf("/proc/self/status lacks %q", want)
		}
	}
	if !strings.Contains(status, "Uid:\t0\t0\t0\t0\n") {
		t.Errorf("commands should run as the sandbox's root:\n%s", status)
	}
	m = wsExec(t, env, w.WorkspaceID, "cat", "/proc/self/uid_map")
	if f := strings.Fields(fmt.Sprint(m["stdout"])); len(f) != 3 || f[0] != "0" || f[1] == "0" {
		t.Errorf("sandbox root should map to an unprivileged host uid: uid_map %q", m["stdout"])
	}

	// A fork bomb stops at pids.max (1024), with the agent's and the
	// shell's processes counted in.
	m = wsExec(t, env, w.WorkspaceID, "./probe", "forks", "5000")
	out, _ = m["stdout"].(string)
	var forked int
	var forkErr string
	fmt.Sscanf(out, "forked %d err=%s", &forked, &forkErr)
	t.Logf("fork bomb: %s", strings.TrimSpace(out))
	if forked == 0 || forked >= 1024 || forkErr == "<nil>" {
		t.Errorf("fork bomb not stopped by the pids limit: %q", out)
	}

	// memory.max is mem_mib: touching twice that gets the command killed.
	m = wsExec(t, env, w.WorkspaceID, "./probe", "mem", "512")
	t.Logf("512 MiB in a 256 MiB sandbox: exit %v, stdout %q", m["exit_code"], m["stdout"])
	if m["exit_code"] == float64(0) || strings.Contains(m["stdout"].(string), "allocated") {
		t.Errorf("allocated 512 MiB in a 256 MiB sandbox: %v", m)
	}
	if m := wsExec(t, env, w.WorkspaceID, "echo", "alive"); m["stdout"] != "alive\n" {
		t.Errorf("sandbox unusable after the limits hit: %v", m)
	}

	// The vCPU count is a CPU quota (one vCPU: 100 ms per 100 ms period).
	var quotas []string
	for _, d := range cgroupSandboxes() {
		if slices.Contains(before, d) {
			continue
		}
		for _, f := range []string{"cpu.max", "cpu.cfs_quota_us"} {
			if b, err := os.ReadFile(filepath.Join(d, f)); err == nil {
				quotas = append(quotas, f+"="+strings.TrimSpace(string(b)))
			}
		}
	}
	if len(quotas) != 1 || (quotas[0] != "cpu.max=100000 100000" && quotas[0] != "cpu.cfs_quota_us=100000") {
		t.Errorf("sandbox CPU quota: %v, want one vCPU", quotas)
	}
	mustWS(t, env, nil, "delete", w.WorkspaceID)
	if got := cgroupSandboxes(); len(got) != len(before) {
		t.Errorf("cgroups left after delete: before %v, now %v", before, got)
	}
}
