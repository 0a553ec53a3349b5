package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
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
