package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What a guest chooses (modes, links, devices) must not reach the host
// through export: a root guest makes a setuid binary, a world-writable
// directory, an absolute symlink to a key, a relative symlink out of the
// tree, a fifo and a symlink to /etc/shadow; each comes out safe.
func TestExportBoundary(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	res := wsExec(t, env, id, "sh", "-ec", `
mkdir -p out/open
printf '#!/bin/sh\nid\n' > out/suid && chmod 6755 out/suid
chmod 1777 out/open && echo hi > out/open/f && chmod 0666 out/open/f
ln -s /root/.ssh/id_rsa out/id_rsa
ln -s ../../etc out/x
ln -s open/f out/inside
mkfifo out/fifo
ln -s /etc/shadow shadowlink
chmod 0777 out`)
	if res["exit_code"] != float64(0) {
		t.Fatalf("guest setup: %v", res)
	}

	umask := syscall.Umask(0o022)
	syscall.Umask(umask)
	host := t.TempDir()
	out := filepath.Join(host, "out")
	var er struct {
		FileCount    int `json:"file_count"`
		SkippedCount int `json:"skipped_count"`
		Skipped      []struct {
			Path   string `json:"path"`
			Reason string `json:"reason"`
		} `json:"skipped"`
	}
	mustWS(t, env, &er, "export", id, "out", "--output", out)
	mode := func(name string) fs.FileMode {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return fi.Mode()
	}
	special := fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
	for name, want := range map[string]fs.FileMode{
		".":      fs.ModeDir | 0o777&^fs.FileMode(umask) | 0o700,
		"suid":   0o755 &^ fs.FileMode(umask),
		"open":   fs.ModeDir | 0o777&^fs.FileMode(umask) | 0o700,
		"open/f": 0o666 &^ fs.FileMode(umask),
	} {
		if m := mode(name); m != want || m&special != 0 {
			t.Errorf("%s: mode %v, want %v", name, m, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(out, "inside")); err != nil || l != "open/f" {
		t.Errorf("a symlink inside the tree was not kept: %q %v", l, err)
	}
	for _, name := range []string{"id_rsa", "x", "fifo"} {
		if _, err := os.Lstat(filepath.Join(out, name)); err == nil {
			t.Errorf("%s was written to the host", name)
		}
	}
	skipped := map[string]string{}
	for _, s := range er.Skipped {
		skipped[s.Path] = s.Reason
	}
	// The agent does not archive fifos, so only the links are reported.
	if er.SkippedCount != 2 || skipped["id_rsa"] == "" || skipped["x"] == "" {
		t.Errorf("skipped: %+v", er)
	}

	// A single-file export of a symlink is refused: the output path never
	// becomes a link (here it would be one to the host's /etc/shadow).
	shadow := filepath.Join(host, "shadow")
	r := ws(t, env, nil, "export", id, "shadowlink", "--output", shadow)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "symlink") {
		t.Errorf("file export of a symlink: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Lstat(shadow); err == nil {
		t.Error("file export of a symlink wrote the output path")
	}
	ents, _ := os.ReadDir(host)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("leftovers beside the output: %v", names)
	}
	t.Logf("file export of a symlink: %s", strings.TrimSpace(r.stdout+r.stderr))
}

// Diff streams: a large file in /workspace costs the CLI a bounded amount
// of memory (io.ReadAll per entry held all of it), and the human output
// carries neither the workspace's secrets nor the guest's terminal escape
// sequences.
func TestDiffBoundedAndClean(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	const secret = "tok-5f1e9a77c3"
	var w wsStatus
	mustWS(t, env, &w, "create", "--secret", "TOKEN="+secret, baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	size := 512 << 20
	if v, err := strconv.Atoi(os.Getenv("PYRO_E2E_DIFF_MIB")); err == nil && v > 0 {
		size = v << 20 // measured by hand with 4096
	}
	// fallocate: writing the bytes through a TCG guest takes minutes.
	var res map[string]any
	r := ws(t, env, &res, "exec", id, "--timeout-seconds", "120", "--", "sh", "-ec", fmt.Sprintf(`
fallocate -l %d big.bin
cp /run/pyro-secrets/TOKEN leak.txt
printf 'x\n' > "$(printf 'evil\033]0;pwned\007\033[2J.txt')"
printf 'title \033]0;pwned\007 and \033[31mred\n' > esc.txt`, size))
	if r.code != 0 || res["exit_code"] != float64(0) {
		t.Fatalf("guest setup: exit %d %v %s", r.code, res, r.stderr)
	}

	cmd := exec.Command(pyroBin, "workspace", "diff", id)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("diff: %v: %s", err, errb.String())
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	t.Logf("diff of a %d MiB file: %s, max RSS %d MiB", size>>20, time.Since(start).Round(time.Millisecond), rss>>20)
	// 512 MiB: a bound well below the file; 4 GiB: the 256 MiB.
	limit := int64(min(size/4, 256<<20))
	if rss > limit {
		t.Errorf("max RSS %d MiB for a %d MiB file, want at most %d MiB", rss>>20, size>>20, limit>>20)
	}
	text := out.String()
	if !strings.Contains(text, "A big.bin") || !strings.Contains(text, "A leak.txt") || !strings.Contains(text, "A esc.txt") {
		t.Errorf("diff output lacks the changes:\n%s", text)
	}
	if strings.Contains(text, secret) {
		t.Errorf("diff output shows the secret:\n%s", text)
	}
	if strings.ContainsAny(text, "\x1b\x07") {
		t.Errorf("diff output carries terminal control sequences: %q", text)
	}
	// JSON output is escaped by the encoder, but redacted too.
	r = ws(t, env, nil, "diff", id)
	if r.code != 0 || strings.Contains(r.stdout, secret) {
		t.Errorf("diff --json: exit %d, secret shown: %v", r.code, strings.Contains(r.stdout, secret))
	}
}

// Snapshot names are validated at every lookup: a crafted delete cannot
// reach a host file or the baseline, and a tampered snapshot record (a
// short digest) is an error, not a crash.
func TestSnapshotNameBoundary(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	snaps := filepath.Join(home, "workspaces", id, "snapshots")
	// What "../../x" reaches from the snapshots directory.
	victims := []string{filepath.Join(home, "workspaces", "x.json"), filepath.Join(home, "workspaces", "x.tar")}
	for _, v := range victims {
		if err := os.WriteFile(v, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"../../x", "./baseline", "baseline/..", strings.Repeat("a", 300)} {
		r := ws(t, env, nil, "snapshot", "delete", id, name)
		if r.code != 2 || !strings.Contains(r.stdout, "invalid_argument") {
			t.Errorf("snapshot delete %q: exit %d %s %s", name, r.code, r.stdout, r.stderr)
		}
		r = ws(t, env, nil, "reset", id, "--snapshot", name)
		if r.code != 2 || !strings.Contains(r.stdout, "invalid_argument") {
			t.Errorf("reset --snapshot %q: exit %d %s %s", name, r.code, r.stdout, r.stderr)
		}
	}
	for _, v := range victims {
		if _, err := os.Stat(v); err != nil {
			t.Errorf("a crafted snapshot name removed %s", v)
		}
	}
	if r := ws(t, env, nil, "snapshot", "delete", id, "baseline"); r.code != 5 {
		t.Errorf("snapshot delete baseline: exit %d %s", r.code, r.stdout)
	}
	// A tampered record with a short digest.
	if err := os.WriteFile(filepath.Join(snaps, "short.json"), []byte(`{"name":"short","sha256":"ab","bytes":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snaps, "short.tar"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := ws(t, env, nil, "reset", id, "--snapshot", "short")
	if r.code != 5 || strings.Contains(r.stderr, "panic") {
		t.Errorf("reset to a tampered snapshot: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	var list struct {
		Snapshots []struct {
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	mustWS(t, env, &list, "snapshot", "list", id)
	if len(list.Snapshots) != 1 || list.Snapshots[0].Name != "baseline" {
		t.Errorf("snapshot list: %+v", list)
	}
}
