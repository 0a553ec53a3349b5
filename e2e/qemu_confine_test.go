package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/hostres"
)

// TestVMQEMUConfined (issue #12.12, #12.8): a booted VM's QEMU runs under
// its seccomp filter (mode 2), with an environment holding nothing of
// pyro's (no PYRO_MCP_TOKEN), as an unprivileged user when pyro is root,
// with no host path on its command line; and a guest flooding its serial
// console fills at most twice the console cap on the host.
func TestVMQEMUConfined(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	env = append(env, "PYRO_MCP_TOKEN=e2e-token-must-not-leak", "PYRO_CONSOLE_LOG_MAX_BYTES=65536")
	// A workspace: it has a read-write disk too, and outlives an exec. Its
	// secret comes on stdin (--secret NAME, #12.11), so no process of pyro's
	// (CLI, supervisor, QEMU) ever shows it on a command line.
	const secret = "e2e-stdin-secret-7f3a"
	create := exec.Command(pyroBin, "workspace", "create", "--json", "--secret", "E2E_TOKEN", baseEnv)
	create.Env = append(os.Environ(), env...)
	create.Stdin = strings.NewReader(secret + "\n")
	out, err := create.Output()
	var w wsStatus
	if err != nil || json.Unmarshal(out, &w) != nil || w.WorkspaceID == "" {
		t.Fatalf("create with a stdin secret: %v %s", err, out)
	}
	defer ws(t, env, nil, "delete", w.WorkspaceID)
	var res map[string]any
	if r := ws(t, env, &res, "exec", w.WorkspaceID, "--secret-env", "E2E_TOKEN", "--", "sh", "-c", `test "$E2E_TOKEN" = `+secret+` && echo arrived`); r.code != 0 || res["stdout"] != "arrived\n" {
		t.Fatalf("the stdin secret did not arrive: %d %v %s", r.code, res, r.stderr)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), secret) {
			t.Errorf("%s holds the secret: %q", p, b)
		}
	}
	dir := filepath.Join(home, "workspaces", w.WorkspaceID)
	pidText, err := os.ReadFile(filepath.Join(dir, "vmm.pid"))
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strings.TrimSpace(string(pidText))

	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, val, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(val)
		}
	}
	if fields["Seccomp"] != "2" {
		t.Errorf("qemu Seccomp %q, want 2 (filter)", fields["Seccomp"])
	}
	uids := strings.Fields(fields["Uid"])
	if os.Geteuid() == 0 && (len(uids) != 4 || uids[0] == "0" || uids[1] == "0" || uids[2] == "0" || uids[3] == "0") {
		t.Errorf("pyro runs as root, qemu Uid %q: want an unprivileged uid", fields["Uid"])
	}
	if capEff := fields["CapEff"]; os.Geteuid() == 0 && capEff != "0000000000000000" {
		t.Errorf("qemu keeps capabilities %s", capEff)
	}

	environ, err := os.ReadFile(proc + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(environ), "\x00") {
		if strings.HasPrefix(kv, "PYRO_") || strings.Contains(kv, "e2e-token") {
			t.Errorf("qemu environment holds %q", kv)
		}
	}
	cmdline, _ := os.ReadFile(proc + "/cmdline")
	for _, a := range strings.Split(string(cmdline), "\x00") {
		if strings.Contains(a, "/environments/") || strings.HasPrefix(a, "file=/") {
			t.Errorf("qemu command line names a host file: %q", a)
		}
	}

	// 300 KB on the serial console; the cap is 64 KiB per generation.
	if res := wsExec(t, env, w.WorkspaceID, "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo done"); res["stdout"] != "done\n" {
		t.Fatalf("flood: %v", res)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, err1 := os.Stat(filepath.Join(dir, "console.log"))
		old, err2 := os.Stat(filepath.Join(dir, "console.log.1"))
		if err1 == nil && err2 == nil {
			if cur.Size() > 65536 || old.Size() > 65536 {
				t.Fatalf("console log over its cap: %d + %d bytes", cur.Size(), old.Size())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console log never rotated: %v %v", err1, err2)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRunHostResourceCaps (#12.8): a request beyond the host's cores or
// memory is refused before anything boots, with a hint.
func TestRunHostResourceCaps(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--vcpu-count", strconv.Itoa(runtime.NumCPU() + 1)}, "exceeds this host's"},
		{[]string{"--mem-mib", "65536", "--vcpu-count", "1"}, "exceeds this host's memory"},
	} {
		if h, err := hostres.Observe(); err == nil && c.want == "exceeds this host's memory" && h.MemTotalMiB > 60000 {
			continue // this host could give a guest the contract's largest size
		}
		r := pyro(t, env, append(append([]string{"run"}, c.args...), baseEnv, "--", "true")...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "hint") {
			t.Errorf("run %v: exit %d, want 2 and %q with a hint: %s", c.args, r.code, c.want, r.stderr)
		}
	}
}
