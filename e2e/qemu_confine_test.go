package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	// A workspace: it has a read-write disk too, and outlives an exec.
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	defer ws(t, env, nil, "delete", w.WorkspaceID)
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
