package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestLoadImageConfig(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "srv/app"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\napp:x:1000:1001::/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1001:\ndocker:x:999:app,other\n"), 0o644)
	write := func(c agentapi.ImageConfig) string {
		b, _ := json.Marshal(c)
		p := filepath.Join(root, "cfg.json")
		os.WriteFile(p, b, 0o644)
		return p
	}
	d, err := LoadImageConfig(filepath.Join(root, "none.json"), root)
	if err != nil || d.Env != nil || d.Credential != nil || d.Cwd != "" {
		t.Fatalf("no config: %+v %v", d, err)
	}
	d, err = LoadImageConfig(write(agentapi.ImageConfig{Env: []string{"PATH=/opt/bin", "X=a=b"}, WorkingDir: "/srv/app", User: "app"}), root)
	if err != nil {
		t.Fatal(err)
	}
	if d.Env["PATH"] != "/opt/bin" || d.Env["X"] != "a=b" || d.Env["HOME"] != "/home/app" || d.Env["LANG"] == "" || d.Cwd != "/srv/app" {
		t.Errorf("env/cwd: %+v", d)
	}
	if c := d.Credential; c == nil || c.Uid != 1000 || c.Gid != 1001 || len(c.Groups) != 2 || c.Groups[1] != 999 {
		t.Errorf("credential: %+v", c)
	}
	for spec, want := range map[string][2]uint32{"1000": {1000, 1001}, "4242": {4242, 0}, "app:docker": {1000, 999}, "7:8": {7, 8}} {
		d, err := LoadImageConfig(write(agentapi.ImageConfig{User: spec, WorkingDir: "/missing"}), root)
		if err != nil || d.Credential.Uid != want[0] || d.Credential.Gid != want[1] || d.Cwd != "" {
			t.Errorf("user %q: %+v %v", spec, d.Credential, err)
		}
	}
	for _, bad := range []string{"nobody-here", "app:nogroup"} {
		if _, err := LoadImageConfig(write(agentapi.ImageConfig{User: bad}), root); err == nil {
			t.Errorf("user %q resolved", bad)
		}
	}
}

// TestUnresolvableImageUserRefused plays an image whose config names a
// user its /etc/passwd does not have: the agent used to log it and run
// every command as root. Now exec, jobs, services and shells all refuse,
// saying why, and nothing runs.
func TestUnresolvableImageUserRefused(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\n"), 0o644)
	b, _ := json.Marshal(agentapi.ImageConfig{User: "app"})
	cfg := filepath.Join(root, "cfg.json")
	os.WriteFile(cfg, b, 0o644)
	d := LoadImageDefaults(cfg, root)
	if d.Refuse == nil || d.Credential != nil || !errors.Is(d.Refuse, errdefs.ErrFailedPrecondition) || !strings.Contains(d.Refuse.Error(), `"app"`) {
		t.Fatalf("defaults %+v: want a refusal naming the user", d)
	}
	if d := LoadImageDefaults(filepath.Join(root, "none.json"), root); d.Refuse != nil {
		t.Fatalf("no image config refused: %v", d.Refuse)
	}

	marker := filepath.Join(t.TempDir(), "ran")
	c := newTestClient(t, Options{RefuseCommands: d.Refuse})
	ctx := testCtx(t)
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"touch", marker}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != agentapi.ExitCannotExecute || !strings.Contains(res.Stderr, "not run its commands as root") {
		t.Errorf("exec: exit %d stderr %q, want 126 and the reason", res.ExitCode, res.Stderr)
	}
	if _, err := c.OpenShell(ctx, agentapi.ShellOpenRequest{}); err == nil || !strings.Contains(err.Error(), `"app"`) {
		t.Errorf("shell opened: %v", err)
	}
	if _, err := c.StartService(ctx, agentapi.ServiceStartRequest{Name: "s", Argv: []string{"touch", marker}}); err == nil || !strings.Contains(err.Error(), `"app"`) {
		t.Errorf("service started: %v", err)
	}
	if j, err := c.StartJob(ctx, agentapi.ExecRequest{Argv: []string{"touch", marker}}); err == nil {
		w, _ := c.WaitJob(ctx, j.JobID, 5*time.Second)
		if w.ExitCode == nil || *w.ExitCode != agentapi.ExitCannotExecute {
			t.Errorf("job: %+v, want exit 126", w)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a command ran despite the unresolvable user")
	}
}
