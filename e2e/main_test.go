// Package e2e boots real guests through the real pyro binary. It runs only
// with PYRO_E2E=1 (scripts/test.sh sets it) and skips, saying why, otherwise.
// Tests run one at a time: each TCG vCPU needs a host core.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// baseEnv is the small environment most tests boot; the README's default
// environment is exercised by TestRunDefaultEnvironment.
const baseEnv = "debian:12-base"

var (
	pyroBin  string
	skipWhy  string
	pullOnce sync.Map // environment -> *sync.Once
)

func TestMain(m *testing.M) {
	// pyro honours an ignored SIGHUP (nohup) and its children inherit the
	// disposition, so under `nohup go test` the hangup and parent-death
	// tests would see pyro do what nohup asks. Catching SIGHUP here makes
	// every child start with the default disposition again (exec resets
	// caught signals, not ignored ones); this process drops the hangups.
	if signal.Ignored(syscall.SIGHUP) {
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	}
	switch {
	case os.Getenv("PYRO_E2E") != "1":
		skipWhy = "end-to-end tests boot real guests; set PYRO_E2E=1 (scripts/test.sh does)"
	case os.Geteuid() != 0:
		skipWhy = "end-to-end tests build environments with mmdebstrap/debootstrap, which need root"
	default:
		pyroBin = os.Getenv("PYRO_BIN")
		if pyroBin == "" {
			dir, err := os.MkdirTemp("", "pyro-e2e-bin-")
			if err != nil {
				panic(err)
			}
			defer os.RemoveAll(dir)
			pyroBin = filepath.Join(dir, "pyro")
			build := exec.Command("go", "build", "-o", pyroBin, "../cmd/pyro")
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build pyro: %v\n%s", err, out)
				os.Exit(1)
			}
		}
	}
	os.Exit(m.Run())
}

func requireE2E(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// result of one pyro invocation.
type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// pyro runs the binary with args and the given extra environment.
func pyro(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(pyroBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("pyro %v: %v", args, err)
	}
	return r
}

// ensureEnv pulls an environment into the shared state dir once per test run.
func ensureEnv(t *testing.T, name string) {
	t.Helper()
	o, _ := pullOnce.LoadOrStore(name, new(sync.Once))
	var failed string
	o.(*sync.Once).Do(func() {
		r := pyro(t, nil, "env", "pull", name)
		if r.code != 0 {
			failed = fmt.Sprintf("pull %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
		}
		t.Logf("env pull %s took %s", name, r.elapsed.Round(time.Millisecond))
	})
	if failed != "" {
		t.Fatal(failed)
	}
}

// runJSON runs `pyro run --json` and decodes the result object.
func runJSON(t *testing.T, env []string, args ...string) (map[string]any, result) {
	t.Helper()
	r := pyro(t, env, append([]string{"run", "--json"}, args...)...)
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("pyro run %v: not JSON (exit %d): %v\nstdout: %s\nstderr: %s", args, r.code, err, r.stdout, r.stderr)
	}
	return m, r
}

// stateDir is where the binary keeps state for this test run.
func stateDir() string {
	if d := os.Getenv("PYRO_HOME"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pyro")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "pyro")
}

// vmDirs lists VM directories left in a state dir.
func vmDirs(t *testing.T, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "vms"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// qemuProcessesFor lists pids of QEMU processes of VMs under root: QEMU
// names its VM directory in its -name option (its cwd is "/").
func qemuProcessesFor(root string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "qemu-system") {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		for _, a := range strings.Split(string(cmdline), "\x00") {
			if strings.HasPrefix(a, "guest="+root) {
				pids = append(pids, e.Name())
				break
			}
		}
	}
	return pids
}

// isolatedHome returns a fresh PYRO_HOME that shares the installed
// environments and caches of the main state dir (so nothing is rebuilt) but
// has its own vms/ directory, so a test can assert that nothing is left.
func isolatedHome(t *testing.T) (string, []string) {
	t.Helper()
	home := t.TempDir()
	shared := stateDir()
	for _, d := range []string{"environments", "cache"} {
		if err := os.MkdirAll(filepath.Join(shared, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(shared, d), filepath.Join(home, d)); err != nil {
			t.Fatal(err)
		}
	}
	return home, []string{"PYRO_HOME=" + home}
}
