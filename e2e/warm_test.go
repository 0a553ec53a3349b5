package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// Warm starts (issue #14). Each test works on a private copy of the base
// environment, so its memory snapshots are its own: the shared cache is
// neither needed nor touched. The first start of a configuration builds the
// snapshot; the starts after it are restores.

// warmHome is a PYRO_HOME with a private copy of baseEnv (sharing only the
// initramfs cache).
func warmHome(t *testing.T) (string, []string) {
	t.Helper()
	ensureEnv(t, baseEnv)
	home := t.TempDir()
	dir := strings.ReplaceAll(baseEnv, ":", "_")
	envs := filepath.Join(home, "environments")
	if err := os.MkdirAll(envs, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "--sparse=always", filepath.Join(stateDir(), "environments", dir), envs).CombinedOutput(); err != nil {
		t.Fatalf("copy environment: %v %s", err, out)
	}
	// Start without the shared cache's snapshots.
	olds, _ := filepath.Glob(filepath.Join(envs, dir, "*", "golden"))
	for _, o := range olds {
		_ = os.RemoveAll(o)
	}
	if err := os.Symlink(filepath.Join(stateDir(), "cache"), filepath.Join(home, "cache")); err != nil {
		t.Fatal(err)
	}
	return home, []string{"PYRO_HOME=" + home}
}

// identityProbe reads /dev/urandom before anything else, then the
// identity a clone must not share.
const identityProbe = `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address`

func warmRun(t *testing.T, env []string, args ...string) (map[string]any, []string) {
	t.Helper()
	m, r := runJSON(t, env, args...)
	if r.code != 0 {
		t.Fatalf("run %v: exit %d: %s %s", args, r.code, r.stdout, r.stderr)
	}
	out, _ := m["stdout"].(string)
	return m, strings.Split(strings.TrimSpace(out), "\n")
}

// TestWarmClonesDiffer: two guests restored from one snapshot differ in the
// first bytes of /dev/urandom, hostname, machine-id and MAC.
func TestWarmClonesDiffer(t *testing.T) {
	requireE2E(t)
	_, env := warmHome(t)
	args := []string{"--network", baseEnv, "--", "sh", "-c", identityProbe}
	warmRun(t, env, args...) // builds the snapshot (or finds it)
	a, la := warmRun(t, env, args...)
	b, lb := warmRun(t, env, args...)
	for _, m := range []map[string]any{a, b} {
		if m["start"] != "warm" {
			t.Fatalf("start = %v, want warm (%v)", m["start"], m)
		}
	}
	if len(la) != 4 || len(lb) != 4 {
		t.Fatalf("probe output: %q / %q", la, lb)
	}
	for i, what := range []string{"urandom", "hostname", "machine-id", "mac"} {
		if la[i] == "" || la[i] == lb[i] {
			t.Errorf("%s: %q and %q, want two different values", what, la[i], lb[i])
		}
	}
	t.Logf("warm boot_ms %v and %v", a["boot_ms"], b["boot_ms"])
}

// TestWarmCorruptSnapshotBootsCold: a damaged snapshot is detected before
// use, discarded and replaced by a cold boot; a snapshot that passes the
// file checks but that QEMU refuses (as from another QEMU) also ends in a
// cold boot, never a hung or wrong guest.
func TestWarmCorruptSnapshotBootsCold(t *testing.T) {
	requireE2E(t)
	home, env := warmHome(t)
	snap := prepareSnapshot(t, env, baseEnv)
	if !strings.HasPrefix(snap, home) {
		t.Fatalf("snapshot %s outside the private home", snap)
	}
	state := filepath.Join(snap, "state.bin")
	flip := func() {
		f, err := os.OpenFile(state, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Over the stream's magic: no QEMU loads it.
		if _, err := f.WriteAt([]byte("pyro"), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}

	// 1. State written after it was saved: the stamp check catches it.
	flip()
	m, lines := warmRun(t, env, baseEnv, "--", "sh", "-c", "echo ok; cat /etc/machine-id; hostname")
	if m["start"] != "cold" || lines[0] != "ok" {
		t.Fatalf("corrupt snapshot: start %v stdout %q", m["start"], lines)
	}
	// A cold-booted guest has a machine-id of its own too.
	if len(lines) < 2 || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(lines[1]) {
		t.Fatalf("cold guest's machine-id: %q", lines)
	}
	// And a hostname of its own (the one a restored guest of its id gets).
	if len(lines) < 3 || !regexp.MustCompile(`^pyro-[0-9a-f]{8}$`).MatchString(lines[2]) {
		t.Fatalf("cold guest's hostname: %q", lines)
	}
	if _, err := os.Stat(snap); !os.IsNotExist(err) {
		t.Fatalf("corrupt snapshot not discarded: %v", err)
	}

	// 2. A state QEMU refuses although the manifest vouches for it.
	r := pyro(t, env, "prepare", "--json", baseEnv)
	if r.code != 0 {
		t.Fatalf("prepare again: exit %d %s", r.code, r.stderr)
	}
	flip()
	mf := filepath.Join(snap, "manifest.json")
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	var man map[string]any
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(state, &st); err != nil {
		t.Fatal(err)
	}
	man["state"] = map[string]any{"ino": st.Ino, "size": st.Size, "ctime_ns": st.Ctim.Nano()}
	b, _ = json.Marshal(man)
	if err := os.WriteFile(mf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	m, lines = warmRun(t, env, baseEnv, "--", "echo", "ok")
	if m["start"] != "cold" || lines[0] != "ok" {
		t.Fatalf("refused snapshot: start %v stdout %q", m["start"], lines)
	}
}

// TestWarmWorkspacesOwnDisks: two workspaces restored from one snapshot
// each mount their own disk. The snapshot's guest had probed a placeholder
// disk in the same slot: without dropping those cached blocks the mount
// reads the placeholder and fails (and the start would be cold).
func TestWarmWorkspacesOwnDisks(t *testing.T) {
	requireE2E(t)
	home, env := warmHome(t)
	seeds := t.TempDir()
	ids := map[string]string{}
	for _, who := range []string{"alpha", "beta"} {
		dir := filepath.Join(seeds, who)
		writeTree(t, dir, map[string]string{"who": who})
		var w struct {
			WorkspaceID string `json:"workspace_id"`
			Start       string `json:"start"`
		}
		mustWS(t, env, &w, "create", "--seed-path", dir, baseEnv)
		t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
		ids[who] = w.WorkspaceID
		if w.Start != "warm" {
			log, _ := os.ReadFile(filepath.Join(home, "workspaces", w.WorkspaceID, "supervisor.log"))
			t.Errorf("workspace %s start = %q, want warm; supervisor log:\n%s", who, w.Start, log)
		}
	}
	for who, id := range ids {
		m := wsExec(t, env, id, "cat", "/workspace/who")
		if got, _ := m["stdout"].(string); got != who {
			t.Errorf("workspace %s sees %q in /workspace/who, want %q", id, got, who)
		}
	}
}
