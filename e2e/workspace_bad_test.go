package e2e

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func rawTar(t *testing.T, hs ...tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		h := h
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = "evil"
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return b.Bytes()
}

// TestWorkspaceSeedForms seeds from a directory, a .tar, a .tar.gz and a
// .tgz, and with nothing.
func TestWorkspaceSeedForms(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	src := t.TempDir()
	files := map[string]string{"one.txt": "1\n", "deep/two.txt": "2\n"}
	plain := filepath.Join(src, "seed.tar")
	os.WriteFile(plain, rawTar(t, tar.Header{Name: "one.txt", Typeflag: tar.TypeReg}), 0o644)
	gz := filepath.Join(src, "seed.tar.gz")
	writeTarGz(t, gz, files)
	tgz := filepath.Join(src, "seed.tgz")
	writeTarGz(t, tgz, files)
	dir := filepath.Join(src, "dir")
	writeTree(t, dir, files)
	for _, c := range []struct{ path, mode string }{{"", "empty"}, {dir, "directory"}, {plain, "archive"}, {gz, "archive"}, {tgz, "archive"}} {
		args := []string{"create", baseEnv}
		if c.path != "" {
			args = append(args, "--seed-path", c.path)
		}
		var w wsStatus
		mustWS(t, env, &w, args...)
		if w.WorkspaceSeed.Mode != c.mode || (c.path != "" && w.WorkspaceSeed.SourcePath != c.path) {
			t.Errorf("seed %s: %+v", c.path, w.WorkspaceSeed)
		}
		m := wsExec(t, env, w.WorkspaceID, "sh -c 'find . -type f | sort'")
		want := map[string]string{"empty": "", "directory": "./deep/two.txt\n./one.txt\n"}[c.mode]
		if c.mode == "archive" {
			want = "./one.txt\n"
			if c.path != plain {
				want = "./deep/two.txt\n./one.txt\n"
			}
		}
		if m["stdout"] != want {
			t.Errorf("seed %s: /workspace has %q, want %q", c.path, m["stdout"], want)
		}
		mustWS(t, env, nil, "delete", w.WorkspaceID)
	}
}

// TestWorkspaceBadInput: each bad input is a clear error and writes
// nothing where it must not.
func TestWorkspaceBadInput(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	env = append(env, "PYRO_WORKSPACE_DISK_MIB=64")
	var w wsStatus
	mustWS(t, env, &w, "create", baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	dir := t.TempDir()

	expectFail := func(what string, wantCode int, args ...string) string {
		t.Helper()
		r := ws(t, env, nil, args...)
		if r.code == 0 || (wantCode != 0 && r.code != wantCode) || strings.Contains(r.stderr, "goroutine") {
			t.Errorf("%s: exit %d (want %d): %s %s", what, r.code, wantCode, r.stdout, r.stderr)
		}
		return r.stderr
	}
	archive := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	// Archive members that escape.
	expectFail("dot-dot member", 2, "sync", "push", id, archive("dotdot.tar", rawTar(t, tar.Header{Name: "../../etc/evil", Typeflag: tar.TypeReg})))
	expectFail("absolute member", 2, "sync", "push", id, archive("abs.tar", rawTar(t, tar.Header{Name: "/etc/evil", Typeflag: tar.TypeReg})))
	expectFail("symlink then write through it", 2, "sync", "push", id, archive("symlink.tar", rawTar(t,
		tar.Header{Name: "out", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, tar.Header{Name: "out/evil", Typeflag: tar.TypeReg})))
	expectFail("hardlink outside", 2, "sync", "push", id, archive("hard.tar", rawTar(t, tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"})))
	if m := wsExec(t, env, id, "sh -c 'ls /etc/evil 2>&1; ls -A /workspace'"); !strings.Contains(m["stdout"].(string), "No such file") {
		t.Errorf("an escaping member landed: %q", m["stdout"])
	}
	// Device files are skipped, never created.
	ws(t, env, nil, "sync", "push", id, archive("dev.tar", rawTar(t, tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3})))
	if m := wsExec(t, env, id, "sh -c 'test -e null && echo present || echo absent'"); m["stdout"] != "absent\n" {
		t.Errorf("device file created: %q", m["stdout"])
	}
	// Dest and export paths outside /workspace, also through a guest symlink.
	good := archive("good.tar", rawTar(t, tar.Header{Name: "ok.txt", Typeflag: tar.TypeReg}))
	expectFail("sync dest outside", 2, "sync", "push", id, good, "--dest", "/etc")
	wsExec(t, env, id, "ln -s /etc /workspace/etclink")
	expectFail("sync dest through symlink", 2, "sync", "push", id, good, "--dest", "/workspace/etclink")
	expectFail("export outside", 2, "export", id, "/etc/passwd", "--output", filepath.Join(dir, "p1"))
	expectFail("export through symlink", 2, "export", id, "etclink/passwd", "--output", filepath.Join(dir, "p2"))
	for _, p := range []string{"p1", "p2"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("export wrote %s", p)
		}
	}
	// Export over an existing host path is refused unless --overwrite.
	existing := filepath.Join(dir, "existing.txt")
	os.WriteFile(existing, []byte("mine"), 0o644)
	wsExec(t, env, id, "sh -c 'echo theirs > f.txt'")
	expectFail("export over existing", 4, "export", id, "f.txt", "--output", existing)
	if b, _ := os.ReadFile(existing); string(b) != "mine" {
		t.Errorf("refused export changed the file: %q", b)
	}
	mustWS(t, env, nil, "export", id, "f.txt", "--output", existing, "--overwrite")
	if b, _ := os.ReadFile(existing); string(b) != "theirs\n" {
		t.Errorf("overwrite: %q", b)
	}
	// Names and ids.
	expectFail("unsafe snapshot name", 2, "snapshot", "create", id, "../x")
	expectFail("unknown snapshot", 3, "reset", id, "--snapshot", "nope")
	expectFail("unknown workspace", 3, "exec", "0123456789ab", "--", "true")
	expectFail("unknown environment", 3, "create", "debian:99")
	expectFail("missing seed path", 3, "create", baseEnv, "--seed-path", filepath.Join(dir, "missing"))
	expectFail("seed not dir or archive", 2, "create", baseEnv, "--seed-path", existing)
	// An archive larger than the 64 MiB workspace disk: a clear error, and
	// the workspace still works.
	big := filepath.Join(dir, "big")
	os.MkdirAll(big, 0o755)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	for i := 0; i < 6; i++ {
		os.WriteFile(filepath.Join(big, "f"+string(rune('a'+i))), chunk, 0o644)
	}
	msg := expectFail("archive larger than the disk", 5, "sync", "push", id, big)
	if !strings.Contains(strings.ToLower(msg), "space") {
		t.Errorf("no-space error does not say so: %s", msg)
	}
	if m := wsExec(t, env, id, "sh -c 'rm -rf /workspace/f?; echo ok > after.txt; cat after.txt'"); m["stdout"] != "ok\n" {
		t.Errorf("workspace unusable after a full disk: %v", m)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "workspaces")); len(ents) != 1 {
		t.Errorf("failed creates left workspaces behind: %d", len(ents))
	}
}
