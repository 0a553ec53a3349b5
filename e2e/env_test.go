package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunDefaultEnvironment is the README's main job.
func TestRunDefaultEnvironment(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, "debian:12")
	r := pyro(t, nil, "run", "debian:12", "--", "uname", "-a")
	// The hostname is "pyro-<id digest>", booted cold or restored warm.
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Linux pyro") {
		t.Fatalf("uname -a: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	m, _ := runJSON(t, nil, "debian:12", "--", "python3", "-c", "import sys; print(6*7, sys.version_info[0])")
	if strings.TrimSpace(m["stdout"].(string)) != "42 3" {
		t.Fatalf("python3 in debian:12: %v", m)
	}
}

func TestEnvPullIsIdempotent(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	r := pyro(t, nil, "env", "pull", "--json", baseEnv)
	var res struct {
		AlreadyInstalled bool `json:"already_installed"`
		Environment      struct {
			Installed bool   `json:"installed"`
			Path      string `json:"path"`
		} `json:"environment"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 0 {
		t.Fatalf("pull --json: exit %d %v: %s %s", r.code, err, r.stdout, r.stderr)
	}
	if !res.AlreadyInstalled || !res.Environment.Installed {
		t.Fatalf("second pull was not a no-op: %s", r.stdout)
	}
	// Full verification of ~300 MB is allowed, a rebuild is not.
	if r.elapsed > 30*time.Second {
		t.Fatalf("no-op pull took %s", r.elapsed)
	}
}

func TestEnvListInspectPrune(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	r := pyro(t, nil, "env", "list", "--json")
	var list struct {
		Environments []struct {
			Name      string `json:"name"`
			Default   bool   `json:"default"`
			Installed bool   `json:"installed"`
		} `json:"environments"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("env list --json: %v %s", err, r.stdout)
	}
	names := map[string]bool{}
	for _, e := range list.Environments {
		names[e.Name] = e.Installed
		if e.Default && e.Name != "debian:12" {
			t.Errorf("default is %s", e.Name)
		}
	}
	for _, n := range []string{"debian:12", "debian:12-base", "debian:12-build"} {
		if _, ok := names[n]; !ok {
			t.Errorf("catalog lacks %s", n)
		}
	}
	if !names[baseEnv] {
		t.Errorf("%s not installed after pull", baseEnv)
	}
	if h := pyro(t, nil, "env", "list"); !strings.Contains(h.stdout, "debian:12-build") {
		t.Errorf("human list: %s", h.stdout)
	}

	r = pyro(t, nil, "env", "inspect", "--json", baseEnv)
	var insp struct {
		Path     string `json:"path"`
		Manifest struct {
			Files map[string]struct {
				Size   int64  `json:"size"`
				SHA256 string `json:"sha256"`
			} `json:"files"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &insp); err != nil || insp.Manifest.Files["rootfs.ext4"].SHA256 == "" {
		t.Fatalf("inspect --json: %v %s", err, r.stdout)
	}

	// Prune removes a stale partial build and an unknown name, keeps the install.
	envRoot := filepath.Join(stateDir(), "environments")
	junk := []string{filepath.Join(envRoot, ".tmp-e2e-partial"), filepath.Join(envRoot, "gone_1", "0.1")}
	for _, j := range junk {
		os.MkdirAll(j, 0o755)
		os.WriteFile(filepath.Join(j, "blob"), make([]byte, 4096), 0o644)
	}
	// A fresh partial build may belong to a pull in progress; age this one.
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(junk[0], old, old)
	r = pyro(t, nil, "env", "prune", "--json")
	if r.code != 0 {
		t.Fatalf("prune: %d %s %s", r.code, r.stdout, r.stderr)
	}
	for _, j := range junk {
		if _, err := os.Stat(j); err == nil {
			t.Errorf("prune left %s; said %s", j, r.stdout)
		}
	}
	if _, err := os.Stat(insp.Path); err != nil {
		t.Fatalf("prune removed the installed environment: %v", err)
	}
}

func TestDoctor(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	r := pyro(t, nil, "doctor", "--json")
	var rep struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Name, Status, Detail string
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor --json: %v %s", err, r.stdout)
	}
	seen := map[string]string{}
	detail := map[string]string{}
	for _, c := range rep.Checks {
		seen[c.Name], detail[c.Name] = c.Status, c.Detail
	}
	// #12.12: doctor says whether QEMU's seccomp sandbox applies and
	// whom QEMU runs as.
	if seen["qemu sandbox"] != "ok" || !strings.Contains(detail["qemu sandbox"], "elevateprivileges=deny") {
		t.Errorf("qemu sandbox check: %q %q", seen["qemu sandbox"], detail["qemu sandbox"])
	}
	if os.Geteuid() == 0 && seen["kvm"] != "ok" && os.Getenv("PYRO_QEMU_USER") == "" && !strings.Contains(detail["qemu user"], "qemu runs as nobody") {
		t.Errorf("as root on this host, qemu should run as nobody: %q %q", seen["qemu user"], detail["qemu user"])
	}
	for _, n := range []string{"qemu", "kvm", "tcg", "agent binary", "state dir", "environments", "qemu sandbox", "qemu user"} {
		if seen[n] == "" {
			t.Errorf("doctor has no %q check: %s", n, r.stdout)
		}
	}
	if !rep.OK || r.code != 0 {
		t.Fatalf("doctor not ok on this host: %s", r.stdout)
	}
}
