package e2e

import (
	"os"
	"path/filepath"
	"strconv"
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
	v, r := vmJSON(t, env, "create", "--start", baseEnv)
	if r.code != 0 || v.State != "running" || v.VMMPID <= 0 {
		t.Fatalf("create: %d %+v %s", r.code, v, r.stderr)
	}
	defer pyro(t, env, "vm", "delete", v.VMID)
	proc := "/proc/" + strconv.Itoa(v.VMMPID)

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
	if r := pyro(t, env, "vm", "exec", v.VMID, "--", "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo done"); r.code != 0 {
		t.Fatalf("flood: %d %s", r.code, r.stderr)
	}
	dir := filepath.Join(home, "vms", v.VMID)
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
