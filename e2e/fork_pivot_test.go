package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestForkSettlesPivot: a running host push killed after it named its new
// layer the top but before QEMU switched to it leaves a pivot record and
// a top QEMU never writes (here made by hand: a copy of the disk from
// before a later write). A fork then must copy the layer the guest writes,
// whose blocks its saved RAM caches: from the named top, it lost what the
// guest wrote since (and its file system disagreed with its caches).
func TestForkSettlesPivot(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	id := w.WorkspaceID
	t.Cleanup(func() { ws(t, env, nil, "delete", id) })
	wsExec(t, env, id, "sh", "-c", "echo a > /workspace/a.txt && sync")
	dir := filepath.Join(home, "workspaces", id)
	disk := filepath.Join(dir, "workspace.ext4")
	if _, err := os.Stat(filepath.Join(dir, "layers", "top")); err == nil {
		t.Skip("the workspace keeps a chain already")
	}
	if err := os.MkdirAll(filepath.Join(dir, "layers"), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "--sparse=always", disk, filepath.Join(dir, "layers", "9.raw")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]any{"layer": "layers/9.raw", "parent": "workspace.ext4", "size": st.Size(),
		"mtime": st.ModTime().UnixNano(), "blocks": st.Sys().(*syscall.Stat_t).Blocks * 512})
	if err := os.WriteFile(filepath.Join(dir, "layers", "pivot"), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "layers", "top"), []byte("layers/9.raw"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The guest, on the old layer still, writes.
	wsExec(t, env, id, "sh", "-c", "echo b > /workspace/b.txt && sync")
	var fr forkResult
	if r := ws(t, env, &fr, "fork", id); r.code != 0 || len(fr.Forks) != 1 {
		t.Fatalf("fork: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	f := fr.Forks[0].WorkspaceID
	t.Cleanup(func() { ws(t, env, nil, "delete", f) })
	m := wsExec(t, env, f, "sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches; cat /workspace/a.txt /workspace/b.txt")
	if got := strings.TrimSpace(strings.ReplaceAll(anyString(m["stdout"]), "\n", " ")); got != "a b" {
		t.Fatalf("the fork reads %q (%v), want what the source wrote", got, m)
	}
}

func anyString(v any) string {
	s, _ := v.(string)
	return s
}
